//! One layer of an image, as the flatten reads it: a name, its stored size,
//! and how to open its tar stream (again, for a hard-link fix-up).

use std::io::{self, BufRead};

use builderd_import::TarReader;

use crate::Error;

/// One layer of an image.
pub struct Layer<'a> {
    /// Names the layer in errors and logs (its digest).
    pub name: String,
    /// Bytes of its stored (compressed) blob: lanes are balanced by it.
    pub size: u64,
    /// Opens the layer's uncompressed tar stream, on a thread of its own.
    /// Called once, and again only for a hard link whose target an upper
    /// layer replaced.
    #[allow(clippy::type_complexity)]
    pub open: Box<dyn Fn() -> io::Result<Box<dyn BufRead + Send + 'a>> + Send + Sync + 'a>,
}

pub(crate) fn open<'a>(
    layer: &Layer<'a>,
) -> Result<TarReader<Box<dyn BufRead + Send + 'a>>, Error> {
    let input = (layer.open)().map_err(|source| Error::Open {
        layer: layer.name.clone(),
        source,
    })?;
    Ok(TarReader::new(input, "its tar stream"))
}

pub(crate) fn layer_err(layer: &Layer<'_>) -> impl Fn(builderd_import::Error) -> Error {
    let name = layer.name.clone();
    move |source| Error::Layer {
        layer: name.clone(),
        source,
    }
}
