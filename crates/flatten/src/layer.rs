//! One layer of an image, as the flatten reads it: a name, its stored size,
//! and how to open its tar stream (again, for a hard-link fix-up).

use std::io::{self, BufRead};
use std::sync::Arc;

use builderd_ext4::Metadata;
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
    /// Rewrites each entry's metadata as it is read, or drops the entry
    /// (false), given its normalised path: for a layer made under a user
    /// namespace (owners shifted on the host) that also holds placeholders
    /// no image keeps. None: entries as the layer has them.
    pub adjust: Option<Arc<Adjust>>,
}

/// See `Layer::adjust`.
pub type Adjust = dyn Fn(&[u8], &mut Metadata) -> bool + Send + Sync;

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

/// Applies the layer's `adjust` to an entry: false drops it.
pub(crate) fn adjusted(layer: &Layer<'_>, path: &[u8], meta: &mut Metadata) -> bool {
    layer
        .adjust
        .as_ref()
        .is_none_or(|adjust| adjust(path, meta))
}
