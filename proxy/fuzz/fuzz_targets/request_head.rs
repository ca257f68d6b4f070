//! Fuzzes the workers' request-head parse: ranges inside the head, trailing bytes change
//! nothing, framing headers consistent (see `mcplb::internals::check_request_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb::internals;

fuzz_target!(|data: &[u8]| {
    let Some((first, head)) = data.split_first() else {
        return;
    };
    // Mostly the default limit (100 headers), sometimes a small one.
    let max_headers = if first & 0x80 == 0 {
        100
    } else {
        usize::from(first & 0x1f)
    };
    internals::check_request_head(head, max_headers);
});
