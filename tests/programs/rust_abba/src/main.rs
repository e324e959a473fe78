//! Two threads take two std::sync::Mutex in opposite orders. Rust's mutexes
//! are futex-based with their uncontended path inline: no lock function sees
//! them, so igdeadlock cannot trace them and must say so.
//!   rust_abba           one after the other (a Barrier keeps them apart)
//!   rust_abba deadlock  at once: both hold their first mutex, then ask for
//!                       the other one, and deadlock for good
//!   rust_abba quiet     the first thread joined before the second starts:
//!                       no thread ever waits, on a lock or anything else
//! Prints "thread ab TID" and "thread ba TID".
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

fn gettid() -> i64 {
    // SYS_gettid on x86-64 and aarch64 Linux
    #[cfg(target_arch = "x86_64")]
    const SYS_GETTID: i64 = 186;
    #[cfg(target_arch = "aarch64")]
    const SYS_GETTID: i64 = 178;
    extern "C" {
        fn syscall(number: i64, ...) -> i64;
    }
    unsafe { syscall(SYS_GETTID) }
}

fn main() {
    let mode = std::env::args().nth(1);
    if mode.as_deref() == Some("quiet") {
        return quiet();
    }
    let deadlock = mode.as_deref() == Some("deadlock");
    let a = Arc::new(Mutex::new(0u64));
    let b = Arc::new(Mutex::new(0u64));
    let meet = Arc::new(Barrier::new(2));
    let ab = {
        let (a, b, meet) = (a.clone(), b.clone(), meet.clone());
        thread::spawn(move || {
            println!("thread ab {}", gettid());
            let mut first = a.lock().unwrap();
            if deadlock {
                meet.wait();
            }
            *b.lock().unwrap() += 1;
            *first += 1;
            drop(first);
            if !deadlock {
                meet.wait();
            }
        })
    };
    let ba = thread::spawn(move || {
        if !deadlock {
            meet.wait();
        }
        println!("thread ba {}", gettid());
        let mut first = b.lock().unwrap();
        if deadlock {
            meet.wait();
        }
        *a.lock().unwrap() += 1;
        *first += 1;
    });
    ab.join().unwrap();
    ba.join().unwrap();
}

fn quiet() {
    let a = Arc::new(Mutex::new(0u64));
    let b = Arc::new(Mutex::new(0u64));
    for a_first in [true, false] {
        let (a, b) = (a.clone(), b.clone());
        thread::spawn(move || {
            let name = if a_first { "ab" } else { "ba" };
            println!("thread {} {}", name, gettid());
            let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
            let mut held = first.lock().unwrap();
            *second.lock().unwrap() += 1;
            *held += 1;
        })
        .join()
        .unwrap();
    }
}
