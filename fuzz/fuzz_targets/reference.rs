//! Any text as a SOURCE or an image reference: parsing never panics, and a
//! reference that parses prints as one that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(builderd_oci::Source::Registry(r)) = builderd_oci::Source::parse(text) {
        let again = builderd_oci::ImageRef::parse(&r.to_string())
            .unwrap_or_else(|e| panic!("{text:?} parsed, its form {r} does not: {e}"));
        assert_eq!(again, r, "{text:?}");
    }
    let _ = builderd_oci::ImageRef::parse(text);
});
