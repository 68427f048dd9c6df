//! Any bytes as a registry's documents: the first as the manifest or index a
//! tag names, the rest (split at 0xff bytes) as what each fetch returns
//! (manifests for an index's platform, then the config). Resolving must
//! answer an image or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut docs = data.split(|&b| b == 0xff).map(<[u8]>::to_vec);
    let top = docs.next().unwrap_or_default();
    let digest = builderd_oci::Digest::of(&top);
    let platform = builderd_oci::Platform::parse("linux/amd64").unwrap();
    let mut fetch = |_: &builderd_oci::Digest, _: u64, _: builderd_oci::Doc| {
        docs.next()
            .ok_or_else(|| builderd_oci::Error::NotFound("no more documents".into()))
    };
    let _ = builderd_oci::resolve(top, digest, &platform, &mut fetch);
});
