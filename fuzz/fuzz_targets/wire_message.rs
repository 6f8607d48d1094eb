#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| e2e_tests::fuzzing::wire_message(data));
