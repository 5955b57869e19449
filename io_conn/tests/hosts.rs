//! Beyond one host (issue 13): several io_conn instances on one machine that never collide, and
//! instances behind HAProxy speaking PROXY v2. Real binaries, real shared memory; every process
//! a test starts is killed and every file, segment and network namespace it made is removed on
//! drop, also when the test fails.

mod util;

#[path = "hosts/haproxy.rs"]
mod haproxy;
#[path = "hosts/harness.rs"]
mod harness;
#[path = "hosts/instances.rs"]
mod instances;
#[path = "hosts/net.rs"]
mod net;
