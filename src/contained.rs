//! Panics of a dependency's parser, contained where retrace calls it.
//!
//! A few readers retrace relies on panic on some malformed input instead of returning an error
//! (burn-optim's optimizer-record reader, for one). [`contain`] runs such a call, turns its
//! panic into `None`, and marks the thread meanwhile, so that the panic hook of the `retrace`
//! binary (and the fuzz campaign's) can stay quiet about a panic that is already an error.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `call`; `None` when it panicked.
pub fn contain<T>(call: impl FnOnce() -> T) -> Option<T> {
    let outer = CONTAINING.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(call));
    CONTAINING.with(|c| c.set(outer));
    result.ok()
}

/// True on a thread that is inside [`contain`]: a panic there becomes an error, so a panic hook
/// need not report it.
pub fn is_contained() -> bool {
    CONTAINING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_none_and_the_mark_is_lifted_after() {
        assert!(!is_contained());
        let seen_inside = contain(is_contained);
        assert_eq!(seen_inside, Some(true));
        let panicked: Option<()> = contain(|| panic!("malformed (this panic is part of the test)"));
        assert_eq!(panicked, None);
        assert!(!is_contained());
    }
}
