//! The command line every md binary shares (`md::cli`), run as real processes: md itself and the
//! examples, which are one line of `main` each (`md::main`). Serving under `io_conn --spawn-md`
//! with a `[[md.group]]` naming an example's binary is io_conn's e2e test `groups.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// md, or an example next to it (`cargo build -p md --bins --examples` builds them).
fn bin(name: &str) -> PathBuf {
    let md = PathBuf::from(env!("CARGO_BIN_EXE_md"));
    let p =
        if name == "md" { md } else { md.parent().expect("bin dir").join("examples").join(name) };
    assert!(p.is_file(), "{} not found (run `cargo build -p md --bins --examples`)", p.display());
    p
}

fn run(bin: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(bin).args(args).env("RUST_LOG", "info").output().expect("run binary");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// A per-test scratch dir, removed on drop (also when the test fails).
struct Dir(PathBuf);
impl Dir {
    fn new(test: &str) -> Self {
        let d = std::env::temp_dir().join(format!("md-cli-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        Self(d)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BINARIES: [&str; 4] = ["md", "upper", "chat", "greet"];

#[test]
fn help_and_version() {
    for name in BINARIES {
        let (out, text) = run(&bin(name), &["--help"]);
        assert!(out.status.success(), "{name} --help: {text}");
        for flag in ["--config <PATH>", "--instance <N>", "--check-config", "--version", "--help"] {
            assert!(text.contains(flag), "{name} --help lacks {flag}: {text}");
        }
        assert!(text.contains(&format!("Usage: {name} ")), "{name} --help: {text}");
        let (out, text) = run(&bin(name), &["--version"]);
        assert!(out.status.success(), "{name} --version: {text}");
        assert_eq!(text.trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn check_config_good_and_bad() {
    let dir = Dir::new("check");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/shmsrv.toml");
    let shipped = shipped.to_str().expect("utf-8 path");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[md]\nmax_instances = 2\nspin = \"30 parsecs\"\n").expect("write");
    let bad = bad.to_str().expect("utf-8 path");
    for name in BINARIES {
        let b = bin(name);
        for args in
            [&["--check-config"][..], &["--check-config", "--config", shipped, "--instance", "3"]]
        {
            let (out, text) = run(&b, args);
            assert!(out.status.success(), "{name} {args:?}: {text}");
            assert!(text.contains("config ok: "), "{name} {args:?}: {text}");
            assert!(text.contains("serves every service with the md binary"), "{name}: {text}");
        }
        // A bad value: exit 2, the file, the line and the key named.
        let (out, text) = run(&b, &["--check-config", "--config", bad]);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains(&format!("{bad}:3: md.spin: ")), "{name}: {text}");
        assert!(!text.contains("config ok"), "{name}: {text}");
        // An instance beyond md.max_instances, a missing file, a bad argument: exit 2.
        let (out, text) = run(&b, &["--check-config", "--config", shipped, "--instance", "8"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains("--instance 8 is out of range: md.max_instances is 8"), "{text}");
        let missing = dir.0.join("missing.toml");
        let (out, text) = run(&b, &["--config", missing.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains("missing.toml"), "{name}: {text}");
        let (out, text) = run(&b, &["--instance", "x"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
    }
}

/// upper's own `[service.upper]` section (`Service::configure`), checked by the real binary:
/// accepted, and a bad value refused with the file, the line and the key.
#[test]
fn check_config_runs_the_service_settings() {
    let dir = Dir::new("service");
    let listener = "[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"upper\"\n\
                    framing = \"line\"\n\n[service.upper]\n";
    let good = dir.0.join("good.toml");
    std::fs::write(&good, format!("{listener}suffix = \"!\"\n")).expect("write");
    let (out, text) = run(&bin("upper"), &["--check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("config ok: ") && text.contains("; service: upper"), "{text}");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, format!("{listener}suffix = 7\n")).expect("write");
    let bad = bad.to_str().unwrap();
    let (out, text) = run(&bin("upper"), &["--check-config", "--config", bad]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("{bad}:7: service.upper.suffix: expected a string")), "{text}");
    assert!(!text.contains("config ok"), "{text}");
    // md itself does not read [service.upper]: the file is fine for it.
    let (out, text) = run(&bin("md"), &["--check-config", "--config", bad]);
    assert!(out.status.success(), "{text}");
}
