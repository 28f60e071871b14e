//! Return codes and the calling thread's last error text.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An error on its way to the host: a negative code and its text.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) text: String,
}

impl Failure {
    pub(crate) fn new(code: i32, text: impl Into<String>) -> Failure {
        Failure { code, text: text.into() }
    }

    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(crate::PULSEWIRE_E_NULL, format!("{what} is NULL"))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(text: &str) {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        last.push_str(text);
    });
}

pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST_ERROR.with(|last| f(&last.borrow()))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string());
    format!("internal error (panic): {what}")
}

/// Runs an export's body: a failure becomes its code with the text kept as the last error, and
/// a panic becomes `PULSEWIRE_E_PANIC` instead of unwinding into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<i32, Failure>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(failure)) => {
            set_last_error(&failure.text);
            failure.code
        }
        Err(payload) => {
            set_last_error(&panic_text(payload.as_ref()));
            crate::PULSEWIRE_E_PANIC
        }
    }
}

/// [`guard`] for an export without a return code: a panic is kept as the last error.
pub(crate) fn guard_void(body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        set_last_error(&panic_text(payload.as_ref()));
    }
}

/// [`guard`] for an export that returns a pointer: NULL on a panic.
pub(crate) fn guard_ptr<T>(body: impl FnOnce() -> *mut T) -> *mut T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(ptr) => ptr,
        Err(payload) => {
            set_last_error(&panic_text(payload.as_ref()));
            std::ptr::null_mut()
        }
    }
}
