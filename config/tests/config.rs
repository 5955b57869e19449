//! Loading whole files: the shipped file, empty files, and one bad file per kind of mistake,
//! each checked for the exact key and line its error names.

use std::path::Path;
use std::time::Duration;

use config::{Config, Dispatch, ErrorKind, Framing, SHIPPED, ShmBackend};

mod util;

use util::{bad, expect};

#[test]
fn shipped_file_is_the_default() {
    let cfg = Config::from_toml_str(SHIPPED, "shmsrv.toml").unwrap();
    assert_eq!(cfg, Config::default());
    let on_disk = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("shmsrv.toml")).unwrap();
    assert_eq!(on_disk, Config::default());
}

#[test]
fn shipped_file_lists_every_key() {
    // Every key of the schema (as serialized) appears uncommented in the shipped file.
    let all = Config::default().to_toml();
    for line in all.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            SHIPPED.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "{key} missing from shmsrv.toml"
        );
    }
    for table in
        ["[shared]", "[io_conn]", "[[io_conn.listener]]", "[md]", "[md.dumb]", "[viewstats]"]
    {
        assert!(SHIPPED.lines().any(|l| l == table), "{table}");
    }
}

#[test]
fn empty_and_missing_file() {
    assert_eq!(Config::from_toml_str("", "t.toml").unwrap(), Config::default());
    assert_eq!(Config::from_toml_str("# nothing\n\n", "t.toml").unwrap(), Config::default());
    assert_eq!(Config::from_toml_str("[md]\n[io_conn]\n", "t.toml").unwrap(), Config::default());
    assert_eq!(Config::load_or_default(None).unwrap(), Config::default());
    let e = Config::load(Path::new("/nonexistent/shmsrv.toml")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.to_string(), "/nonexistent/shmsrv.toml: cannot read config file");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn the_defaults() {
    let cfg = Config::default();
    assert_eq!(cfg.shared.name, "shmsrv");
    assert_eq!(cfg.shared.shm_backend, ShmBackend::Posix);
    assert_eq!(cfg.shared.queue_size, 1 << 20);
    assert_eq!(cfg.shared.max_message, 64 << 10);
    assert_eq!(cfg.io_conn.idle_timeout, Duration::from_secs(300));
    assert_eq!(cfg.io_conn.spin, Duration::from_micros(50));
    let l: Vec<_> =
        cfg.io_conn.listeners.iter().map(|l| (l.address.to_string(), l.framing())).collect();
    assert_eq!(
        l,
        [
            ("127.0.0.1:4680".to_owned(), Framing::Raw),
            ("127.0.0.1:9090".to_owned(), Framing::Line),
            ("127.0.0.1:8090".to_owned(), Framing::Line),
            ("127.0.0.1:8080".to_owned(), Framing::Http),
            ("127.0.0.1:6380".to_owned(), Framing::Resp)
        ]
    );
    assert_eq!((cfg.io_conn.http.max_head, cfg.io_conn.http.max_headers), (8 << 10, 100));
    for l in cfg.io_conn.listeners.iter().filter(|l| l.service != "kv") {
        assert_eq!((l.dispatch(), l.pipeline_depth()), (Dispatch::Request, 16), "{l:?}");
    }
    assert_eq!(cfg.md.max_instances, 8);
    assert!(cfg.groups().is_empty());
    assert_eq!(cfg.md.slice, Duration::from_millis(1));
    assert_eq!(cfg.md.dumb.wait_max, Duration::from_secs(60));
    assert_eq!(cfg.viewstats.refresh, Duration::from_secs(1));
}

#[test]
fn values_are_read() {
    let cfg = Config::from_toml_str(
        r#"
[shared]
name = "test-1"
runtime_dir = "/run/test"
shm_backend = "sysv"
queue_size = 1048576
max_message = "64k"

[io_conn]
idle_timeout = "0s"
spin = "1.5us"
read_buffer = 4096

[[io_conn.listener]]
address = "[::1]:0"
service = "kv"
framing = "len32"

[md.dumb]
stream_chunk = "1KiB"
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(cfg.shared.name, "test-1");
    assert_eq!(cfg.runtime_dir(), Path::new("/run/test"));
    assert_eq!(cfg.shared.shm_backend, ShmBackend::Sysv);
    assert_eq!(cfg.shared.queue_size, 1 << 20);
    assert_eq!(cfg.shared.max_message, 64 << 10);
    assert_eq!(cfg.io_conn.idle_timeout, Duration::ZERO);
    assert_eq!(cfg.io_conn.spin, Duration::from_nanos(1500));
    assert_eq!(cfg.io_conn.read_buffer, 4096);
    assert_eq!(cfg.io_conn.listeners.len(), 1);
    assert_eq!(cfg.io_conn.listeners[0].framing(), Framing::Len32);
    // A kv listener without `dispatch` is bound per flow (kv's default).
    assert_eq!(cfg.io_conn.listeners[0].dispatch(), Dispatch::Flow);
    assert_eq!(cfg.io_conn.listeners[0].pipeline_depth(), 16);
    assert_eq!(cfg.md.dumb.stream_chunk, 1024);
    assert_eq!(cfg.md.max_instances, 8);
}

#[test]
fn to_toml_round_trips() {
    let mut cfg = Config::default();
    cfg.shared.max_message = 1000;
    cfg.md.dumb.stream_chunk = 1000;
    cfg.io_conn.spin = Duration::from_nanos(1500);
    cfg.io_conn.listeners[0].framing = Some(Framing::Len32);
    let text = cfg.to_toml();
    assert_eq!(Config::from_toml_str(&text, "out.toml").unwrap(), cfg, "{text}");
    assert_eq!(
        Config::from_toml_str(&Config::default().to_toml(), "o").unwrap(),
        Config::default()
    );
}

#[test]
fn summary_names_every_section() {
    let s = Config::default().summary();
    for part in [
        "name=shmsrv",
        "queue_size=1MiB",
        "127.0.0.1:4680=echo/raw",
        "127.0.0.1:9090=reverse/line/request:16",
        "md.group: all instances serve every service",
        "idle_timeout=5m",
        "spin=50us",
        "max_instances=8",
        "slice=1ms",
        "dumb.stream_chunk=16KiB",
        "refresh=1s",
    ] {
        assert!(s.contains(part), "{part} not in {s}");
    }
    assert!(!s.contains('\n'));
}

// ---- unknown keys -------------------------------------------------------------------------

#[test]
fn unknown_top_level_section() {
    expect(
        "[shared]\nname = \"a\"\n\n[sharde]\nx = 1\n",
        ErrorKind::Schema,
        Some("sharde"),
        4,
        "unknown field `sharde`",
    );
}

#[test]
fn unknown_key_in_section() {
    expect(
        "[shared]\nname = \"a\"\n\n[io_conn]\nbacklog = 5\nbacklogg = 5\n",
        ErrorKind::Schema,
        Some("io_conn.backlogg"),
        6,
        "unknown field `backlogg`",
    );
}

#[test]
fn unknown_key_in_nested_section() {
    expect(
        "[md]\nspin = \"1us\"\n[md.dumb]\nburn_max = 5\nburnmax = 5\n",
        ErrorKind::Schema,
        Some("md.dumb.burnmax"),
        5,
        "unknown field `burnmax`",
    );
}

#[test]
fn unknown_key_in_listener() {
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n\n[[io_conn.listener]]\naddress = \"127.0.0.1:2\"\nservice = \"echo\"\nport = 5\n",
        ErrorKind::Schema,
        Some("io_conn.listener[1].port"),
        8,
        "unknown field `port`",
    );
}

#[test]
fn unknown_dotted_key() {
    expect(
        "io_conn.backlog = 5\nmd.instances = 3\n",
        ErrorKind::Schema,
        Some("md.instances"),
        2,
        "unknown field `instances`",
    );
}

// ---- wrong types --------------------------------------------------------------------------

#[test]
fn wrong_types() {
    expect(
        "[io_conn]\n\nbacklog = \"many\"\n",
        ErrorKind::Schema,
        Some("io_conn.backlog"),
        3,
        "invalid type",
    );
    expect(
        "[io_conn]\nbacklog = -1\n",
        ErrorKind::Schema,
        Some("io_conn.backlog"),
        2,
        "invalid value",
    );
    expect("[shared]\nname = 5\n", ErrorKind::Schema, Some("shared.name"), 2, "invalid type");
    expect(
        "[shared]\nqueue_size = true\n",
        ErrorKind::Schema,
        Some("shared.queue_size"),
        2,
        "expected a size",
    );
    expect(
        "[shared]\nqueue_size = 1.5\n",
        ErrorKind::Schema,
        Some("shared.queue_size"),
        2,
        "expected a size",
    );
    expect("shared = 5\n", ErrorKind::Schema, Some("shared"), 1, "invalid type");
    expect(
        "[io_conn]\nlistener = 5\n",
        ErrorKind::Schema,
        Some("io_conn.listener"),
        2,
        "invalid type",
    );
}

#[test]
fn negative_size() {
    expect(
        "[shared]\nqueue_size = -4096\n",
        ErrorKind::Schema,
        Some("shared.queue_size"),
        2,
        "must not be negative",
    );
}

#[test]
fn integer_duration() {
    expect(
        "[io_conn]\nspin = 20\n",
        ErrorKind::Schema,
        Some("io_conn.spin"),
        2,
        "a bare number has no unit",
    );
}

// ---- bad values (schema level) ------------------------------------------------------------

#[test]
fn bad_duration_string() {
    let text = "[shared]\n\n[io_conn]\n# comment\nidle_timeout = \"30 parsecs\"\n";
    expect(
        text,
        ErrorKind::Schema,
        Some("io_conn.idle_timeout"),
        5,
        "invalid duration \"30 parsecs\"",
    );
    assert_eq!(
        bad(text).to_string(),
        "t.toml:5: io_conn.idle_timeout: invalid duration \"30 parsecs\" (unknown unit \
         \"parsecs\"; expected e.g. \"30s\", \"250ms\"; units ns, us, ms, s, m, h)"
    );
}

#[test]
fn bad_size_strings() {
    expect(
        "[io_conn]\nread_buffer = \"16 KB\"\n",
        ErrorKind::Schema,
        Some("io_conn.read_buffer"),
        2,
        "ambiguous unit \"KB\"",
    );
    expect(
        "[shared]\nqueue_size = \"99999999999GiB\"\n",
        ErrorKind::Schema,
        Some("shared.queue_size"),
        2,
        "too large",
    );
    expect(
        "[md.dumb]\nstream_chunk = \"lots\"\n",
        ErrorKind::Schema,
        Some("md.dumb.stream_chunk"),
        2,
        "invalid size \"lots\"",
    );
}

#[test]
fn bad_enum_values() {
    expect(
        "[shared]\nshm_backend = \"mmap\"\n",
        ErrorKind::Schema,
        Some("shared.shm_backend"),
        2,
        "unknown variant `mmap`",
    );
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\nframing = \"http2\"\n",
        ErrorKind::Schema,
        Some("io_conn.listener[0].framing"),
        4,
        "invalid framing \"http2\"",
    );
}

/// A listener without `dispatch` (or with `""`) gets its service's default: `request` for the
/// stateless built-ins, `flow` for kv and for any other service; an explicit value wins.
#[test]
fn dispatch_defaults_per_service() {
    let table = |service: &str, dispatch: &str| {
        format!(
            "[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"{service}\"\nframing = \"line\"\n{dispatch}"
        )
    };
    let cases = [
        ("http", "", Dispatch::Request),
        ("echo", "", Dispatch::Request),
        ("reverse", "dispatch = \"\"\n", Dispatch::Request),
        ("dumb", "", Dispatch::Request),
        ("kv", "", Dispatch::Flow),
        ("chat", "", Dispatch::Flow),
        ("http", "dispatch = \"flow\"\n", Dispatch::Flow),
        ("chat", "dispatch = \"request\"\n", Dispatch::Request),
    ];
    for (service, dispatch, want) in cases {
        let cfg = Config::from_toml_str(&table(service, dispatch), "t.toml").unwrap();
        assert_eq!(cfg.io_conn.listeners[0].dispatch(), want, "{service} {dispatch:?}");
    }
    assert_eq!(config::default_dispatch("http"), Dispatch::Request);
    assert_eq!(config::default_dispatch("kv"), Dispatch::Flow);
}

#[test]
fn bad_address() {
    let text = "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n[[io_conn.listener]]\nservice = \"echo\"\naddress = \"localhost:80\"\n";
    expect(
        text,
        ErrorKind::Schema,
        Some("io_conn.listener[1].address"),
        6,
        "invalid address \"localhost:80\"",
    );
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1\"\nservice = \"echo\"\n",
        ErrorKind::Schema,
        Some("io_conn.listener[0].address"),
        2,
        "expected IP:port",
    );
}

#[test]
fn listener_missing_required_key() {
    expect(
        "[io_conn]\nbacklog = 5\n\n[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\n",
        ErrorKind::Schema,
        Some("io_conn.listener[0]"),
        4,
        "missing field `service`",
    );
}

// ---- syntax -------------------------------------------------------------------------------

#[test]
fn syntax_errors() {
    expect("[shared]\nname = \"a\"\nqueue_size = = 5\n", ErrorKind::Syntax, None, 3, "");
    expect(
        "[shared]\nname = \"a\"\nname = \"b\"\n",
        ErrorKind::Syntax,
        None,
        3,
        "duplicate key `name`",
    );
    expect("[shared\n", ErrorKind::Syntax, None, 1, "");
}

// ---- validation (after the schema) --------------------------------------------------------

#[test]
fn queue_size_not_power_of_two() {
    expect(
        "[shared]\nname = \"a\"\nqueue_size = \"3MiB\"\n",
        ErrorKind::Invalid,
        Some("shared.queue_size"),
        3,
        "not a power of two",
    );
}

#[test]
fn max_message_too_big_for_queue() {
    // Both keys written: the error points at queue_size.
    let text = "[shared]\nmax_message = \"4MiB\"\nqueue_size = \"4MiB\"\n";
    expect(
        text,
        ErrorKind::Invalid,
        Some("shared.queue_size"),
        3,
        "too small for shared.max_message = 4MiB",
    );
    // Only max_message written: queue_size is the default, the line is max_message's.
    let text = "[shared]\nname = \"a\"\nmax_message = \"2MiB\"\n";
    expect(text, ErrorKind::Invalid, Some("shared.queue_size"), 3, "too small");
    assert!(
        bad(text)
            .to_string()
            .starts_with("t.toml:3: shared.queue_size (default): 1MiB is too small")
    );
    assert!(bad(text).is_default());
}

#[test]
fn zero_max_instances() {
    expect(
        "[io_conn]\n\n[md]\nmax_instances = 0\n",
        ErrorKind::Invalid,
        Some("md.max_instances"),
        4,
        "outside 1..=256",
    );
}

#[test]
fn bad_name_chars() {
    expect(
        "[shared]\nname = \"shm/srv\"\n",
        ErrorKind::Invalid,
        Some("shared.name"),
        2,
        "not a valid name",
    );
    expect(
        "[shared]\nname = \"\"\n",
        ErrorKind::Invalid,
        Some("shared.name"),
        2,
        "not a valid name",
    );
}

#[test]
fn runtime_dir_in_tmp() {
    expect(
        "[shared]\nruntime_dir = \"/tmp\"\n",
        ErrorKind::Invalid,
        Some("shared.runtime_dir"),
        2,
        "world-writable",
    );
    expect(
        "[shared]\nruntime_dir = \"run\"\n",
        ErrorKind::Invalid,
        Some("shared.runtime_dir"),
        2,
        "absolute",
    );
}

#[test]
fn service_without_default_framing() {
    let text = "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n\n[[io_conn.listener]]\naddress = \"127.0.0.1:2\"\nservice = \"foo\"\n";
    expect(
        text,
        ErrorKind::Invalid,
        Some("io_conn.listener[1].framing"),
        7,
        "service `foo` has no default framing; set framing",
    );
    assert!(bad(text).to_string().starts_with("t.toml:7: io_conn.listener[1].framing (default): "));
    // With an explicit framing it is fine.
    let ok = format!("{text}framing = \"line\"\n");
    let cfg = Config::from_toml_str(&ok, "t.toml").unwrap();
    assert_eq!(cfg.io_conn.listeners[1].framing(), Framing::Line);
}

#[test]
fn bad_service_name() {
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"no spaces\"\nframing = \"raw\"\n",
        ErrorKind::Invalid,
        Some("io_conn.listener[0].service"),
        3,
        "not a valid service name",
    );
}

#[test]
fn duplicate_listener_address() {
    let text = "[[io_conn.listener]]\naddress = \"0.0.0.0:7000\"\nservice = \"echo\"\n\n[[io_conn.listener]]\nservice = \"dumb\"\naddress = \"127.0.0.1:7000\"\n";
    expect(
        text,
        ErrorKind::Invalid,
        Some("io_conn.listener[1].address"),
        7,
        "overlaps io_conn.listener[0].address = 0.0.0.0:7000",
    );
}

#[test]
fn empty_listener_list() {
    expect(
        "[io_conn]\nbacklog = 1\nlistener = []\n",
        ErrorKind::Invalid,
        Some("io_conn.listener"),
        3,
        "no listeners",
    );
}

#[test]
fn stream_chunk_against_other_sections() {
    // The offending key is absent; the related one is written: point at it.
    let text = "[io_conn]\noutput_credit = \"4KiB\"\n";
    expect(
        text,
        ErrorKind::Invalid,
        Some("md.dumb.stream_chunk"),
        2,
        "larger than io_conn.output_credit = 4KiB",
    );
    assert!(bad(text).is_default());
    let text = "[md]\nspin = \"0s\"\n\n[md.dumb]\nburn_max = 1\n[io_conn]\noutput_credit = 1024\n";
    let e = bad(text);
    assert_eq!(e.line(), Some(7), "{e}");
}

#[test]
fn validate_without_file_names_key_only() {
    let mut cfg = Config::default();
    cfg.shared.queue_size = 3;
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.line(), None);
    assert_eq!(e.origin(), "");
    assert_eq!(
        e.to_string(),
        "shared.queue_size: 3 bytes is not a power of two (e.g. 1MiB, 4MiB, 16MiB)"
    );
}

#[test]
fn load_names_the_path() {
    let dir = std::env::temp_dir().join(format!("shmsrv-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[viewstats]\nrefresh = \"0s\"\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        e.to_string(),
        format!("{}:2: viewstats.refresh: 0s is outside 10ms..=1h", path.display())
    );
}

/// `shared.max_message` below an OPEN frame (96 B) is refused by the validation, so every
/// program's `--check-config` says so with the key name (issue 14, finding 13); 96 B is accepted.
#[test]
fn max_message_below_open_frame_rejected() {
    let text = "[shared]\nmax_message = \"95B\"\n[md.dumb]\nstream_chunk = \"64B\"\n";
    expect(text, ErrorKind::Invalid, Some("shared.max_message"), 2, "below 96B");
    let ok = "[shared]\nmax_message = \"96B\"\n[md.dumb]\nstream_chunk = \"64B\"\n";
    let cfg = Config::from_toml_str(ok, "t.toml").expect("96B is enough");
    assert_eq!(cfg.shared.max_message, config::MIN_MAX_MESSAGE);
}

/// `io_conn.max_connections_per_ip` is read; its default is 0 (no limit).
#[test]
fn max_connections_per_ip_read_and_off_by_default() {
    assert_eq!(Config::default().io_conn.max_connections_per_ip, 0);
    let cfg =
        Config::from_toml_str("[io_conn]\nmax_connections_per_ip = 8\n", "t.toml").expect("valid");
    assert_eq!(cfg.io_conn.max_connections_per_ip, 8);
}
