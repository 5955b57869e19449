//! Loading files with listener dispatch keys and `[[md.group]]` tables: what is read, and one
//! bad file per kind of mistake, each checked for the exact key and line its error names.

mod util;

use std::path::Path;

use config::{Config, Dispatch, ErrorKind, Instances, SHIPPED};
use util::{bad, expect};

/// Built-ins on 0-3 (the md binary), `kv` on 4 and 6 with its own binary; a flow listener for kv.
const GROUPS: &str = r#"
[[io_conn.listener]]
address = "127.0.0.1:1"
service = "dumb"
dispatch = "request"
pipeline_depth = 64

[[io_conn.listener]]
address = "127.0.0.1:2"
service = "kv"
framing = "len32"
dispatch = "flow"

[md]
max_instances = 8

[[md.group]]
services = ["dumb", "echo", "reverse"]
instances = "0-3"

[[md.group]]
services = ["kv"]
instances = [4, 6]
binary = "/usr/local/bin/kv-md"
"#;

#[test]
fn dispatch_and_groups_are_read() {
    let cfg = Config::from_toml_str(GROUPS, "t.toml").unwrap();
    let l = &cfg.io_conn.listeners;
    assert_eq!((l[0].dispatch(), l[0].pipeline_depth()), (Dispatch::Request, 64));
    assert_eq!((l[1].dispatch(), l[1].pipeline_depth()), (Dispatch::Flow, 16));
    assert_eq!(cfg.groups().len(), 2);
    assert_eq!(cfg.groups()[0].instances, Instances::Range { first: 0, last: 3 });
    assert_eq!(cfg.groups()[1].instances, Instances::List(vec![4, 6]));
    assert_eq!(cfg.instances_for("kv"), [4, 6]);
    assert!(cfg.serves(2, "dumb") && !cfg.serves(2, "kv") && !cfg.serves(5, "dumb"));
    assert_eq!(cfg.binary_for(6, Path::new("/x/md")), Path::new("/usr/local/bin/kv-md"));
    assert_eq!(cfg.binary_for(0, Path::new("/x/md")), Path::new("/x/md"));
    // A single instance, as a string or a number.
    for one in ["\"5\"", "5", "[5]"] {
        let text = GROUPS.replace("instances = [4, 6]", &format!("instances = {one}"));
        let cfg = Config::from_toml_str(&text, "t.toml").unwrap();
        assert_eq!(cfg.instances_for("kv"), [5], "{one}");
    }
    let s = cfg.summary();
    assert!(s.contains("127.0.0.1:2=kv/len32/flow"), "{s}");
    assert!(s.contains("127.0.0.1:1=dumb/line/request:64"), "{s}");
    assert!(s.ends_with("md.group: [0-3:dumb,echo,reverse 4,6:kv@/usr/local/bin/kv-md]"), "{s}");
    // Round trip, and the shipped example (commented out) is a valid config.
    assert_eq!(Config::from_toml_str(&cfg.to_toml(), "o").unwrap(), cfg, "{}", cfg.to_toml());
    let example: String = SHIPPED
        .lines()
        .skip_while(|l| !l.starts_with("# Example: the built-ins"))
        .skip(1)
        .take_while(|l| l.starts_with("#   ") || *l == "#")
        .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
        .collect();
    let text = format!(
        "{example}\n[[io_conn.listener]]\naddress = \"127.0.0.1:3\"\nservice = \"chat\"\nframing = \"line\"\n"
    );
    let cfg = Config::from_toml_str(&text, "example").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cfg.instances_for("chat"), [6, 7]);
}

#[test]
fn bad_dispatch_value() {
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\ndispatch = \"round-robin\"\n",
        ErrorKind::Schema,
        Some("io_conn.listener[0].dispatch"),
        4,
        "invalid dispatch \"round-robin\" (expected \"request\", \"flow\", or \"\" for the service's default)",
    );
}

#[test]
fn pipeline_depth_out_of_range() {
    for (v, line) in [("0", 5), ("1025", 5)] {
        expect(
            &format!(
                "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n\
                 dispatch = \"request\"\npipeline_depth = {v}\n"
            ),
            ErrorKind::Invalid,
            Some("io_conn.listener[0].pipeline_depth"),
            line,
            &format!("{v} is outside 1..=1024"),
        );
    }
    expect(
        "[[io_conn.listener]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\npipeline_depth = -1\n",
        ErrorKind::Schema,
        Some("io_conn.listener[0].pipeline_depth"),
        4,
        "invalid value",
    );
}

/// GROUPS with `old` replaced by `new` (which must occur).
fn groups_with(old: &str, new: &str) -> String {
    assert!(GROUPS.contains(old), "{old}");
    GROUPS.replacen(old, new, 1)
}

/// Line of the first occurrence of `needle` in `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle}"));
    1 + text[..at].matches('\n').count()
}

#[test]
fn bad_instances_syntax() {
    for (written, needle) in [
        ("\"0-\"", "invalid instances \"0-\" (expected \"a-b\""),
        ("\"3 - 5\"", "invalid instances \"3 - 5\""),
        ("\"0-3,5\"", "invalid instances \"0-3,5\""),
        ("\"6-4\"", "the range is backwards (write \"4-6\")"),
        ("[]", "empty list: a group needs at least one instance"),
        ("[4, 4]", "instance 4 is listed twice"),
        ("[4, -1]", "invalid instance -1"),
        ("-2", "invalid instance -2"),
        ("true", "invalid type"),
    ] {
        let text = groups_with("instances = [4, 6]", &format!("instances = {written}"));
        expect(
            &text,
            ErrorKind::Schema,
            Some("md.group[1].instances"),
            line_of(&text, &format!("instances = {written}")),
            needle,
        );
    }
    let text = groups_with("instances = [4, 6]", "instances = [4, \"6\"]");
    expect(
        &text,
        ErrorKind::Schema,
        Some("md.group[1].instances[1]"),
        line_of(&text, "instances = [4"),
        "invalid type: string \"6\", expected i64",
    );
}

#[test]
fn group_schema_errors() {
    let text = groups_with("binary = ", "instance = 3\nbinary = ");
    expect(
        &text,
        ErrorKind::Schema,
        Some("md.group[1].instance"),
        line_of(&text, "instance = 3"),
        "unknown field `instance`",
    );
    let text = groups_with("services = [\"kv\"]\n", "");
    expect(
        &text,
        ErrorKind::Schema,
        Some("md.group[1]"),
        line_of(&text, "[[md.group]]\ninstances = [4"),
        "missing field `services`",
    );
    let text = groups_with("instances = \"0-3\"\n", "");
    expect(
        &text,
        ErrorKind::Schema,
        Some("md.group[0]"),
        line_of(&text, "[[md.group]]"),
        "missing field `instances`",
    );
}

#[test]
fn overlapping_groups() {
    let text = groups_with("instances = [4, 6]", "instances = [4, 3]");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].instances"),
        line_of(&text, "instances = [4, 3]"),
        "instance 3 is also in md.group[0].instances = 0-3 (groups must not overlap)",
    );
}

#[test]
fn group_instance_out_of_range() {
    let text = groups_with("instances = [4, 6]", "instances = \"4-8\"");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].instances"),
        line_of(&text, "instances = \"4-8\""),
        "instance 8 is not below md.max_instances = 8",
    );
    // Lowering max_instances: the group is at fault, its line is named.
    let text = groups_with("max_instances = 8", "max_instances = 6");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].instances"),
        line_of(&text, "instances = [4, 6]"),
        "instance 6 is not below md.max_instances = 6",
    );
}

#[test]
fn empty_or_shared_services() {
    let text = groups_with("services = [\"kv\"]", "services = []");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].services"),
        line_of(&text, "services = []"),
        "empty list: a group serves at least one service",
    );
    let text = groups_with("services = [\"kv\"]", "services = [\"kv\", \"echo\"]");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].services"),
        line_of(&text, "services = [\"kv\", \"echo\"]"),
        "`echo` is also served by md.group[0] (a service belongs to one group)",
    );
}

#[test]
fn listener_service_in_no_group() {
    let text = groups_with("services = [\"kv\"]", "services = [\"kv2\"]");
    let e = bad(&text);
    expect(
        &text,
        ErrorKind::Invalid,
        Some("io_conn.listener[1].service"),
        line_of(&text, "service = \"kv\""),
        "no [[md.group]] serves `kv`: add it to a group's services",
    );
    assert!(!e.is_default());
    // Without listeners in the file, the default listeners' services must be served too.
    let text = "[[md.group]]\nservices = [\"dumb\", \"echo\"]\ninstances = \"0\"\n";
    expect(
        text,
        ErrorKind::Invalid,
        Some("io_conn.listener[1].service"),
        1,
        "no [[md.group]] serves `reverse`",
    );
}

#[test]
fn relative_group_binary() {
    let text = groups_with("binary = \"/usr/local/bin/kv-md\"", "binary = \"target/kv-md\"");
    expect(
        &text,
        ErrorKind::Invalid,
        Some("md.group[1].binary"),
        line_of(&text, "binary ="),
        "\"target/kv-md\" is not an absolute path (or \"\" for the md binary)",
    );
}

#[test]
fn missing_group_binary_is_found_by_check_binaries() {
    let dir = std::env::temp_dir().join(format!("shmsrv-config-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("groups.toml");
    std::fs::write(&path, GROUPS).unwrap();
    // Loading does not look at the file system (md and viewstats read configs of other hosts).
    let cfg = Config::load(&path).unwrap();
    let e = cfg.check_binaries(Some(&path)).unwrap_err();
    let want = format!(
        "{}:{}: md.group[1].binary: /usr/local/bin/kv-md: No such file or directory (os error 2)",
        path.display(),
        line_of(GROUPS, "binary =")
    );
    assert_eq!(e.to_string(), want);
    assert_eq!(cfg.check_binaries(None).unwrap_err().key(), Some("md.group[1].binary"));
    std::fs::remove_dir_all(&dir).unwrap();
}
