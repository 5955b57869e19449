//! End to end: the real io_conn binary with real md children, real sockets on 127.0.0.1, real
//! shared memory. Every test stops the server with SIGTERM and checks exit 0 and that every
//! segment and FIFO it created is gone. Assertions are about bytes and order, never timing; every
//! wait has a generous watchdog.

#[path = "e2e/dispatch.rs"]
mod dispatch;
#[path = "e2e/fairness.rs"]
mod fairness;
#[path = "e2e/groups.rs"]
mod groups;
#[path = "e2e/http.rs"]
mod http;
#[path = "e2e/instances.rs"]
mod instances;
#[path = "e2e/kv.rs"]
mod kv;
#[path = "e2e/notify.rs"]
mod notify;
#[path = "e2e/robustness.rs"]
mod robustness;
#[path = "e2e/scenarios.rs"]
mod scenarios;
#[path = "e2e/services.rs"]
mod services;
#[path = "e2e/stats.rs"]
mod stats;
#[path = "e2e/stop_order.rs"]
mod stop_order;
mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    KillOnDrop, Server, Setup, WATCHDOG, expect_exact, pattern, read_line, read_n, read_to_eof,
    roundtrip, stat,
};
