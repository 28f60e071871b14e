//! The exports called as a C host would, without a server.

use std::ffi::CString;
use std::mem::{offset_of, size_of};

use super::*;

fn last_error() -> String {
    // SAFETY: NULL asks the size; then a buffer of that size.
    let needed = unsafe { pulsewire_last_error(ptr::null_mut(), 0) };
    let mut buf = vec![0u8; usize::try_from(needed).unwrap()];
    // SAFETY: `buf` is writable for its length.
    let again = unsafe { pulsewire_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(again, needed);
    CStr::from_bytes_until_nul(&buf).unwrap().to_str().unwrap().to_string()
}

struct Config(*mut pulsewire_config);

impl Config {
    fn new() -> Config {
        Config(pulsewire_config_new())
    }
    fn set(&self, key: &str, value: &str) -> i32 {
        let (key, value) = (CString::new(key).unwrap(), CString::new(value).unwrap());
        // SAFETY: a live config and NUL-terminated strings.
        unsafe { pulsewire_config_set(self.0, key.as_ptr(), value.as_ptr()) }
    }
    fn client(&self) -> (i32, *mut pulsewire_client) {
        let mut out = ptr::null_mut();
        // SAFETY: a live config, a writable out.
        let code = unsafe { pulsewire_client_new(self.0, &mut out) };
        (code, out)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: from pulsewire_config_new, freed once.
        unsafe { pulsewire_config_free(self.0) }
    }
}

fn valid() -> Config {
    let cfg = Config::new();
    assert_eq!(cfg.set("server", "127.0.0.1:9"), PULSEWIRE_OK);
    assert_eq!(cfg.set("client_id", "desk-42"), PULSEWIRE_OK);
    cfg
}

#[test]
fn the_abi_version_packs_major_and_minor() {
    assert_eq!(pulsewire_abi_version(), (PULSEWIRE_ABI_MAJOR << 16) | PULSEWIRE_ABI_MINOR);
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(pulsewire_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let cfg = Config::new();
    assert_eq!(cfg.set("colour", "blue"), PULSEWIRE_E_CONFIG);
    let text = last_error();
    assert!(text.contains("unknown config key \"colour\""), "{text}");
}

#[test]
fn a_bad_value_is_an_error_naming_the_key() {
    let cfg = Config::new();
    for (key, value) in [
        ("tls", "maybe"),
        ("initial_delay_ms", "soon"),
        ("max_delay_ms", "-5"),
        ("jitter", "NaN"),
        ("max_attempts", "many"),
        ("max_payload", "1e9"),
        ("connect_timeout_ms", ""),
        ("outbox_messages", "x"),
        ("outbox_bytes", "y"),
        ("server", ""),
    ] {
        assert_eq!(cfg.set(key, value), PULSEWIRE_E_CONFIG, "{key}={value}");
        let text = last_error();
        assert!(text.contains(&format!("config key {key:?}")), "{key}: {text}");
    }
}

#[test]
fn every_documented_key_is_accepted() {
    let cfg = valid();
    let settings = [
        ("token", "secret-token"),
        ("tls", "false"),
        ("initial_delay_ms", "100"),
        ("max_delay_ms", "2000"),
        ("multiplier", "2"),
        ("jitter", "0.1"),
        ("max_attempts", "5"),
        ("max_elapsed_ms", "60000"),
        ("max_payload", "200000"),
        ("connect_timeout_ms", "3000"),
        ("handshake_timeout_ms", "3000"),
        ("close_timeout_ms", "2000"),
        ("outbox_messages", "100"),
        ("outbox_bytes", "1000000"),
        ("resume_state_file", "/nonexistent/pulsewire-resume"),
    ];
    for (key, value) in settings {
        assert_eq!(cfg.set(key, value), PULSEWIRE_OK, "{key}: {}", last_error());
    }
    let mut tried: Vec<&str> =
        settings.iter().map(|(key, _)| *key).chain(["server", "client_id", "tls_ca_file"]).collect();
    let mut known = config::KEYS.to_vec();
    tried.sort_unstable();
    known.sort_unstable();
    assert_eq!(tried, known, "every key is tried");
    let (code, client) = cfg.client();
    assert_eq!(code, PULSEWIRE_OK, "{}", last_error());
    // SAFETY: from pulsewire_client_new.
    unsafe { pulsewire_free(client) };
}

#[test]
fn a_config_the_sdk_refuses_is_an_error_and_no_client() {
    let cfg = Config::new();
    let (code, client) = cfg.client();
    assert_eq!((code, client), (PULSEWIRE_E_CONFIG, ptr::null_mut()));
    assert!(last_error().contains("\"server\" is required"));
    assert_eq!(cfg.set("server", "no-port"), PULSEWIRE_OK);
    assert_eq!(cfg.set("client_id", "desk-42"), PULSEWIRE_OK);
    let (code, client) = cfg.client();
    assert_eq!((code, client), (PULSEWIRE_E_CONFIG, ptr::null_mut()));
    assert!(last_error().contains("host:port"), "{}", last_error());
}

#[test]
fn a_ca_file_that_cannot_be_read_is_an_error_naming_the_key() {
    let cfg = valid();
    assert_eq!(cfg.set("tls_ca_file", "/nonexistent/ca.pem"), PULSEWIRE_OK);
    let (code, client) = cfg.client();
    assert_eq!((code, client), (PULSEWIRE_E_CONFIG, ptr::null_mut()));
    assert!(last_error().contains("\"tls_ca_file\""), "{}", last_error());
    assert_eq!(cfg.set("tls", "false"), PULSEWIRE_OK);
    assert_eq!(cfg.client().0, PULSEWIRE_E_CONFIG);
    assert!(last_error().contains("\"tls\" is false"), "{}", last_error());
}

#[test]
fn a_corrupt_resume_state_file_is_an_error_naming_the_key() {
    let path = std::env::temp_dir().join(format!("pulsewire-c-corrupt-{}", std::process::id()));
    std::fs::write(&path, "not a resume state").unwrap();
    let cfg = valid();
    assert_eq!(cfg.set("resume_state_file", path.to_str().unwrap()), PULSEWIRE_OK);
    let (code, _) = cfg.client();
    assert_eq!(code, PULSEWIRE_E_CONFIG);
    assert!(last_error().contains("\"resume_state_file\""), "{}", last_error());
    std::fs::remove_file(path).unwrap();
}

#[test]
fn the_last_error_is_cut_to_the_buffer_and_kept_per_thread() {
    let cfg = Config::new();
    assert_eq!(cfg.set("colour", "blue"), PULSEWIRE_E_CONFIG);
    let full = last_error();
    let mut small = [0x55u8; 8];
    // SAFETY: `small` is writable for 8 bytes.
    let needed = unsafe { pulsewire_last_error(small.as_mut_ptr().cast(), small.len()) };
    assert_eq!(usize::try_from(needed).unwrap(), full.len() + 1);
    assert_eq!(&small[..7], &full.as_bytes()[..7]);
    assert_eq!(small[7], 0);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread has its own last error");
}

#[test]
fn the_event_layout_is_fixed() {
    assert_eq!(size_of::<pulsewire_event>(), 88);
    assert_eq!(offset_of!(pulsewire_event, struct_size), 0);
    assert_eq!(offset_of!(pulsewire_event, kind), 4);
    assert_eq!(offset_of!(pulsewire_event, data_len), 8);
    assert_eq!(offset_of!(pulsewire_event, seq), 16);
    assert_eq!(offset_of!(pulsewire_event, ticket), 24);
    assert_eq!(offset_of!(pulsewire_event, token), 32);
    assert_eq!(offset_of!(pulsewire_event, delay_ms), 40);
    assert_eq!(offset_of!(pulsewire_event, elapsed_ms), 48);
    assert_eq!(offset_of!(pulsewire_event, rtt_us), 56);
    assert_eq!(offset_of!(pulsewire_event, count), 64);
    assert_eq!(offset_of!(pulsewire_event, attempt), 72);
    assert_eq!(offset_of!(pulsewire_event, max), 76);
    assert_eq!(offset_of!(pulsewire_event, reason), 80);
    assert_eq!(offset_of!(pulsewire_event, resumed), 84);
    assert_eq!(offset_of!(pulsewire_event, maybe_delivered), 85);
    assert_eq!(offset_of!(pulsewire_event, _padding), 86);
    assert_eq!(size_of::<pulsewire_state>(), 32);
    assert_eq!(offset_of!(pulsewire_state, reason), 16);
    assert_eq!(offset_of!(pulsewire_state, next_delay_ms), 24);
}

fn started_client() -> *mut pulsewire_client {
    let cfg = valid();
    let (code, client) = cfg.client();
    assert_eq!(code, PULSEWIRE_OK, "{}", last_error());
    client
}

#[test]
fn poll_writes_no_more_than_struct_size_and_keeps_an_event_whose_data_does_not_fit() {
    let client = started_client();
    // SAFETY: a live client.
    let handle = unsafe { client_ref(client) }.unwrap();
    handle.hub.push(event::from_sdk(pulsewire::Event::Connecting { attempt: 3 }));
    handle.hub.push(event::probe(7, Err(pulsewire::ProbeError::Offline)));

    // An old host's struct of 16 bytes, followed by bytes it owns.
    let mut raw = [0xAAu8; 88];
    raw[..4].copy_from_slice(&16u32.to_ne_bytes());
    let ev = raw.as_mut_ptr().cast::<pulsewire_event>();
    // SAFETY: 88 writable bytes, struct_size 16; no data.
    assert_eq!(unsafe { pulsewire_poll(client, ev, ptr::null_mut(), 0) }, PULSEWIRE_OK);
    assert_eq!(u32::from_ne_bytes(raw[4..8].try_into().unwrap()), PULSEWIRE_EVENT_CONNECTING);
    assert_eq!(u64::from_ne_bytes(raw[8..16].try_into().unwrap()), 0);
    assert!(raw[16..].iter().all(|&b| b == 0xAA), "nothing written past struct_size");

    let mut ev = pulsewire_event {
        struct_size: size_of::<pulsewire_event>() as u32,
        ..event::probe(0, Ok(Default::default())).head
    };
    let mut small = [0u8; 4];
    // SAFETY: a full struct and 4 writable bytes.
    let code = unsafe { pulsewire_poll(client, &mut ev, small.as_mut_ptr(), small.len()) };
    assert_eq!(code, PULSEWIRE_E_BUFFER);
    let needed = usize::try_from(ev.data_len).unwrap();
    assert!(needed > 4);
    assert_eq!((ev.kind, ev.token, ev.reason), (PULSEWIRE_EVENT_PROBE, 7, PULSEWIRE_REASON_PROBE_OFFLINE));
    let mut data = vec![0u8; needed];
    // SAFETY: as above, with a buffer of the size asked.
    assert_eq!(unsafe { pulsewire_poll(client, &mut ev, data.as_mut_ptr(), data.len()) }, PULSEWIRE_OK);
    assert_eq!(std::str::from_utf8(&data).unwrap(), "probe failed: the client is offline");
    // SAFETY: as above.
    assert_eq!(unsafe { pulsewire_poll(client, &mut ev, data.as_mut_ptr(), data.len()) }, PULSEWIRE_EMPTY);

    ev.struct_size = 15;
    // SAFETY: as above.
    assert_eq!(unsafe { pulsewire_poll(client, &mut ev, ptr::null_mut(), 0) }, PULSEWIRE_E_INVALID);
    // SAFETY: from pulsewire_client_new.
    unsafe { pulsewire_free(client) };
}

#[test]
fn null_handles_are_errors_or_no_ops() {
    // SAFETY: every pointer is NULL, which each function accepts.
    unsafe {
        pulsewire_config_free(ptr::null_mut());
        pulsewire_free(ptr::null_mut());
        assert_eq!(pulsewire_config_set(ptr::null_mut(), ptr::null(), ptr::null()), PULSEWIRE_E_NULL);
        assert!(last_error().contains("cfg is NULL"));
        assert_eq!(pulsewire_client_new(ptr::null(), ptr::null_mut()), PULSEWIRE_E_NULL);
        let mut out = ptr::NonNull::dangling().as_ptr();
        assert_eq!(pulsewire_client_new(ptr::null(), &mut out), PULSEWIRE_E_NULL);
        assert!(out.is_null(), "out is cleared on an error");
        let c = ptr::null_mut();
        assert_eq!(pulsewire_client_start(c), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_send(c, ptr::null(), 0, ptr::null_mut()), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_probe(c, ptr::null_mut()), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_client_state(c, ptr::null_mut()), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_close(c), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_poll(c, ptr::null_mut(), ptr::null_mut(), 0), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_wait(c, 0), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_set_wake(c, None, ptr::null_mut()), PULSEWIRE_E_NULL);
        assert!(last_error().contains("client is NULL"));

        let cfg = valid();
        assert_eq!(pulsewire_config_set(cfg.0, ptr::null(), c"x".as_ptr()), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_config_set(cfg.0, c"server".as_ptr(), ptr::null()), PULSEWIRE_E_NULL);
        let client = started_client();
        assert_eq!(pulsewire_poll(client, ptr::null_mut(), ptr::null_mut(), 0), PULSEWIRE_E_NULL);
        assert_eq!(pulsewire_send(client, ptr::null(), 5, ptr::null_mut()), PULSEWIRE_E_NULL);
        pulsewire_free(client);
    }
}

#[test]
fn calls_before_start_are_state_errors() {
    let client = started_client();
    // SAFETY: a live client; NULL tickets and tokens are allowed.
    unsafe {
        assert_eq!(pulsewire_send(client, b"hi".as_ptr(), 2, ptr::null_mut()), PULSEWIRE_E_STATE);
        assert!(last_error().contains("not started"));
        assert_eq!(pulsewire_probe(client, ptr::null_mut()), PULSEWIRE_E_STATE);
        assert_eq!(pulsewire_close(client), PULSEWIRE_E_STATE);
        let mut state = pulsewire_state {
            struct_size: 32,
            kind: 99,
            attempt: 0,
            misses: 0,
            reason: 0,
            _padding: 0,
            next_delay_ms: 0,
        };
        assert_eq!(pulsewire_client_state(client, &mut state), PULSEWIRE_OK);
        assert_eq!((state.struct_size, state.kind), (32, PULSEWIRE_STATE_NEW));
        assert_eq!(pulsewire_wait(client, 10), PULSEWIRE_EMPTY);
        assert_eq!(pulsewire_wait(client, -2), PULSEWIRE_E_INVALID);
        pulsewire_free(client);
    }
}

#[test]
fn a_panic_becomes_an_error_code() {
    let code = error::guard(|| panic!("boom"));
    assert_eq!(code, PULSEWIRE_E_PANIC);
    assert!(last_error().contains("boom"));
    assert!(error::guard_ptr::<u8>(|| panic!("again")).is_null());
}

#[test]
fn the_wake_callback_fires_once_per_empty_poll_and_never_after_it_is_cleared() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WAKES: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn count(user: *mut c_void) {
        assert_eq!(user as usize, 42);
        WAKES.fetch_add(1, Ordering::SeqCst);
    }
    // A client that cannot connect (port 9, discard, closed here): it backs off.
    let cfg = valid();
    assert_eq!(cfg.set("initial_delay_ms", "5000"), PULSEWIRE_OK);
    let (_, client) = cfg.client();
    // SAFETY: a live client, a callback that may run on any thread.
    unsafe {
        assert_eq!(pulsewire_set_wake(client, Some(count), 42 as *mut c_void), PULSEWIRE_OK);
        assert_eq!(pulsewire_client_start(client), PULSEWIRE_OK);
        assert_eq!(pulsewire_client_start(client), PULSEWIRE_E_STATE);
        assert_eq!(pulsewire_wait(client, 5000), PULSEWIRE_OK);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while WAKES.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(WAKES.load(Ordering::SeqCst), 1, "one wake until the host polls");
        let mut ev = pulsewire_event { struct_size: 88, ..event::probe(0, Ok(Default::default())).head };
        let mut data = [0u8; 1024];
        while pulsewire_poll(client, &mut ev, data.as_mut_ptr(), data.len()) == PULSEWIRE_OK {}
        assert_eq!(pulsewire_set_wake(client, None, ptr::null_mut()), PULSEWIRE_OK);
        let before = WAKES.load(Ordering::SeqCst);
        let mut token = 0;
        assert_eq!(pulsewire_probe(client, &mut token), PULSEWIRE_OK);
        assert_eq!(pulsewire_wait(client, 5000), PULSEWIRE_OK);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(WAKES.load(Ordering::SeqCst), before, "no wake once cleared");
        assert_eq!(pulsewire_poll(client, &mut ev, data.as_mut_ptr(), data.len()), PULSEWIRE_OK);
        assert_eq!((ev.kind, ev.token, ev.reason), (PULSEWIRE_EVENT_PROBE, token, PULSEWIRE_REASON_PROBE_OFFLINE));
        pulsewire_free(client);
    }
}
