//! Who may read the stats segment (issue 14, findings 5 and 8): a member of its group may, a
//! segment owned by a foreign uid is refused.

use serde_json::Value;

mod util;
use util::*;

/// Issue 14, finding 5: the stats segment is 0640, so a member of the segment's group (the
/// server's, `shmsrv` under systemd) reads it with viewstats; anyone else is refused with a hint
/// to join the group. Run as root: the segment's group is set with chown to a test gid, and
/// viewstats runs as uid 65534 with that gid (or without it).
#[test]
fn issue_14_group_member_reads_the_stats_segment() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run viewstats as another user");
        return;
    }
    let name = unique("i14group");
    let sut = Server::new(&name, 14);
    sut.fill();
    let path = format!("/dev/shm/{name}.stats");
    let gid = 4242;
    std::os::unix::fs::chown(&path, None, Some(gid)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
    let o = run_as(65534, gid, &["--json", "--name", &name]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["epoch"], 14, "{v}");

    let o = run_as(65534, 65534, &["--json", "--name", &name]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("permission denied") && err.contains("usermod -aG shmsrv"), "{err}");
}

/// Issue 14, finding 8: viewstats refuses a stats segment owned by a uid that is neither its
/// own, root's nor the server user's (forged stats), naming the owner.
#[test]
fn issue_14_foreign_owned_stats_segment_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give the segment to another uid");
        return;
    }
    let name = unique("i14owner");
    let sut = Server::new(&name, 15);
    sut.fill();
    std::os::unix::fs::chown(format!("/dev/shm/{name}.stats"), Some(65533), None).unwrap();
    let o = run(&["-1", "--name", &name]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("is owned by uid 65533, not by us or the server user shmsrv"), "{err}");
}
