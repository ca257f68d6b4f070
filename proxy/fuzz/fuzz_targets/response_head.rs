//! Fuzzes the workers' rewrite of an upstream response head: the client's head parses, keeps
//! the status, drops hop-by-hop headers, seals session ids that open to the backend's (see
//! `mcplb::internals::check_response_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb::internals;

fuzz_target!(|data: &[u8]| {
    let Some((first, head)) = data.split_first() else {
        return;
    };
    internals::check_response_head(head, u32::from(*first) * 0x0101_0101);
});
