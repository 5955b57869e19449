//! afl.rs entry point for [`shmsrv_fuzz::resp`]: the checks live in the library, so the replay
//! tests (`fuzz/tests/replay.rs`) run exactly what the fuzzer runs.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        shmsrv_fuzz::resp(data);
    });
}
