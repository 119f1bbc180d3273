//! A UserSig as the simulator decodes it.
#![no_main]

use chatferry::providers::tencent::usersig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(f) = usersig::decode(s) {
        // Whatever decodes also verifies without a panic.
        let _ = usersig::verify(s, f.sdk_app_id, &f.identifier, "fuzz", f.time);
    }
});
