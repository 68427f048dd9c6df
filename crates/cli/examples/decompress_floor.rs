//! The floor for `builderd build`: the time to only decompress every layer
//! of an image (OCI layout), with the decoders builderd uses, one layer after
//! another. `bench/build.py` runs it beside the real conversion.
//!
//!     cargo run --release --example decompress_floor -- LAYOUT_DIR TAG

use std::io::{BufReader, Read};
use std::time::Instant;

use builderd_import::decompress;
use builderd_oci::{Compression, OciLayout, Platform};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, tag] = args.as_slice() else {
        return Err("usage: decompress_floor LAYOUT_DIR TAG".into());
    };
    let layout = OciLayout::open(std::path::Path::new(dir))?;
    let image = layout.resolve(Some(tag), &Platform::host())?;
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for layer in &image.layers {
        let blob = BufReader::with_capacity(1 << 20, layout.open_blob(&layer.digest)?);
        let kind = match layer.compression {
            Compression::None => decompress::Compression::None,
            Compression::Gzip => decompress::Compression::Gzip,
            Compression::Zstd => decompress::Compression::Zstd,
        };
        let mut stream = decompress::decoder(blob, kind)?;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    println!(
        "{:.3} s to decompress {} layers, {} bytes",
        started.elapsed().as_secs_f64(),
        image.layers.len(),
        total
    );
    Ok(())
}
