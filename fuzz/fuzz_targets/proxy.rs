//! afl.rs entry point for [`shmsrv_fuzz::proxy`]: the checks live in the library, so the replay
//! tests run exactly what the fuzzer runs.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        shmsrv_fuzz::proxy(data);
    });
}
