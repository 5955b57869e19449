//! docs/SERVICES.md tells the truth: every Rust block is a piece of md/examples/greet.rs (which
//! builds, and whose tests run with the workspace's), and its config block is a valid addition
//! to the shipped config.

use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fenced blocks of `lang` in `md`, in order.
fn blocks(md: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match &mut cur {
            None if line.trim_start() == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    assert!(cur.is_none(), "unterminated ```{lang} block");
    out
}

#[test]
fn rust_blocks_are_the_example() {
    let doc = read("../docs/SERVICES.md");
    let example = read("examples/greet.rs");
    let rust = blocks(&doc, "rust");
    assert!(rust.len() >= 4, "service, impl, main, tests: {} blocks", rust.len());
    for b in &rust {
        assert!(example.contains(b.as_str()), "not in md/examples/greet.rs:\n{b}");
    }
    // Together they are the whole service: its impl, main and tests.
    let all = rust.concat();
    for needle in [
        "impl Service for Greet",
        "fn configure",
        "md::main(Greet::default())",
        "Harness::with_config(Greet::default()",
    ] {
        assert!(all.contains(needle), "the tutorial lacks {needle}");
    }
}

#[test]
fn config_block_extends_the_shipped_config() {
    let doc = read("../docs/SERVICES.md");
    let shipped = read("../config/shmsrv.toml");
    let toml = blocks(&doc, "toml");
    let groups: Vec<_> = toml.iter().filter(|b| b.contains("[[md.group]]")).collect();
    assert_eq!(groups.len(), 1, "one config block");
    let text = format!("{shipped}\n{}", groups[0]);
    let cfg = config::Config::from_toml_str(&text, "SERVICES.md").expect("valid config");
    assert_eq!(cfg.group_index_of(2), Some(1));
    let l = cfg.io_conn.listeners.iter().find(|l| l.service == "greet").expect("greet listener");
    assert_eq!(l.framing(), config::Framing::Line);
    // The service's own section, as the tutorial's greet reads it.
    let greeting = cfg.service("greet").and_then(|t| t.get("greeting")).and_then(|v| v.as_str());
    assert_eq!(greeting, Some("ahoy"));
    // The Cargo.toml block's paths name this repository's crates.
    let deps = toml.iter().find(|b| b.contains("[dependencies]")).expect("Cargo.toml block");
    for krate in ["md", "shmq"] {
        assert!(deps.contains(&format!("{krate} = {{ path = \"../shmsrv/{krate}\" }}")), "{deps}");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(krate)
                .join("Cargo.toml")
                .is_file()
        );
    }
}
