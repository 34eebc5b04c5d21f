//! reader.rs R7: a `Reader` kept in a thread-local that is destroyed after
//! the crate's own (`OWNED`, the thread's registrations) keeps its slot:
//! no other thread may claim it while the `Reader` can still write it.
//! Before R7 the slot was freed with the registrations; the next thread
//! to read claimed it, and two threads wrote one counter (a review found
//! lost unlocks and stuck grace periods). Its own test binary: it counts
//! the domain's slots, which other tests' threads would add to.

use std::cell::RefCell;
use std::sync::mpsc;

use rcuvm_rcu::{Domain, Reader};

/// Holds a `Reader` until the thread's thread-locals are destroyed; then
/// says so and waits to be let go.
struct Holder {
    reader: Option<Reader<'static>>,
    domain: Option<&'static Domain>,
    told: Option<(mpsc::Sender<bool>, mpsc::Receiver<()>)>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let (said, go) = self.told.take().expect("set up");
        // OWNED, registered after this thread-local, is destroyed by now.
        let g = self.reader.as_ref().expect("set up").read();
        // R8: the section is still this thread's, for its own checks (a
        // synchronize here would panic, P4, not wait for itself).
        let seen = self.domain.expect("set up").in_read_section();
        drop(g);
        said.send(seen).unwrap();
        go.recv().unwrap();
        drop(self.reader.take());
        said.send(true).unwrap();
    }
}

thread_local! {
    static HOLDER: RefCell<Option<Holder>> = const { RefCell::new(None) };
}

#[test]
fn a_reader_outliving_its_threads_registration_keeps_its_slot() {
    let d: &'static Domain = Box::leak(Box::new(Domain::new()));
    let (said_tx, said) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let a = std::thread::spawn(move || {
        // This thread-local first, so it is destroyed after rcuvm-rcu's.
        HOLDER.with(|h| {
            *h.borrow_mut() = Some(Holder { reader: None, domain: Some(d), told: Some((said_tx, go_rx)) })
        });
        let r = d.reader();
        HOLDER.with(|h| h.borrow_mut().as_mut().unwrap().reader = Some(r));
    });
    // A's registrations are gone; its Reader is not, and its section
    // was seen as one.
    assert!(said.recv().unwrap(), "a section of an orphaned Reader was invisible to in_read_section");
    assert_eq!(d.stats().reader_slots, 1);
    // Another thread reads: it must get a slot of its own.
    std::thread::spawn(move || drop(d.read())).join().unwrap();
    assert_eq!(d.stats().reader_slots, 2, "a slot a live Reader uses was handed to another thread");
    // Once the Reader goes, its slot is free for the next thread.
    go.send(()).unwrap();
    said.recv().unwrap();
    a.join().unwrap();
    std::thread::spawn(move || drop(d.read())).join().unwrap();
    std::thread::spawn(move || drop(d.read())).join().unwrap();
    assert_eq!(d.stats().reader_slots, 2, "the Reader's slot was given back");
}
