//! Any bytes as a tar archive (plain, gzip or zstd): read entry by entry,
//! data and all, into the ext4 writer; an error is fine, a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("in.tar");
    std::fs::write(&archive, data).unwrap();
    let image = std::fs::File::create(dir.path().join("out.ext4")).unwrap();
    let Ok(mut writer) = builderd_ext4::Writer::new(image, Default::default()) else {
        return;
    };
    struct Quiet;
    impl builderd_import::Progress for Quiet {
        fn update(&self, _: u64, _: u64) {}
    }
    if builderd_import::import_tar(&archive, &mut writer, &Quiet).is_ok() {
        let _ = writer.finish();
    }
});
