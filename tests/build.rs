//! Decides whether the network-fault tests can run on this machine: they need root and the
//! `iptables` and `ip` commands. Where they cannot, the tests are built `#[ignore]`d, so that
//! the test runner reports them as ignored (skipped), never as passed. With
//! `PULSEWIRE_REQUIRE_NETNS=1` (CI) they are always built to run, and fail if they cannot.

use std::process::Command;

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|out| out.status.success())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(netns_capable)");
    println!("cargo::rerun-if-env-changed=PULSEWIRE_REQUIRE_NETNS");
    // Installing iptables or iproute2 adds a file here, which makes this script run again.
    println!("cargo::rerun-if-changed=/usr/sbin");
    let required = std::env::var_os("PULSEWIRE_REQUIRE_NETNS").is_some_and(|v| v != "0");
    let root =
        Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let capable = root && succeeds("iptables", &["--version"]) && succeeds("ip", &["-V"]);
    if required || capable {
        println!("cargo::rustc-cfg=netns_capable");
    }
}
