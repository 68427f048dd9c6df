//! Reading the layers side by side: each layer's tar stream is parsed on a
//! lane of the ext4 writer, which writes every regular file's content into
//! the image as it comes, so that all the layers decompress at once. What
//! a lane found goes, entry by entry, to the overlay pass, which reads the
//! layers newest first and decides what each entry becomes; content it
//! masks is discarded (its blocks stay free and are zeroed).
//!
//! Which layers share a lane is decided from the blob sizes alone, and the
//! ext4 lanes place content by position, not by time: the same image gives
//! the same bytes however the threads run.

use std::sync::mpsc::{self, Receiver, Sender};

use builderd_ext4::{FileData, Lane, Lanes, Metadata};
use builderd_import::{EntryKind, TarReader};

use crate::layer::{adjusted, layer_err, open, Layer};
use crate::normalize::normalize;
use crate::select::{Select, Verdict};
use crate::Error;

/// Lanes at most: a constant, not the machine's core count, so that the
/// layout (which depends on the lanes) is the same on every machine.
pub const MAX_LANES: usize = 4;
/// Position a tar header takes in a lane (its content adds its size).
const HEADER: u64 = 512;

/// One entry of a layer, its path normalised and its content (if a
/// regular file its verdict lets through) already in the image.
pub struct Item {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Metadata,
    pub data: Option<FileData>,
    pub verdict: Verdict,
    /// A regular file's apparent size.
    pub size: u64,
}

/// A lane's layers in the order it reads them, each with where its entries go.
pub type LaneLayers = Vec<(usize, Sender<Event>)>;

pub enum Event {
    Item(Item),
    /// The layer was read to its end (its digest checked).
    End,
    Failed(Error),
}

/// Each lane's layers, newest first, with the channel each layer's entries
/// go to; and the other ends of the channels, by layer. A layer goes to the
/// lane with the fewest blob bytes so far.
pub fn assign(layers: &[Layer<'_>], lanes: usize) -> (Vec<LaneLayers>, Vec<Receiver<Event>>) {
    let mut load = vec![0u64; lanes];
    let mut plan: Vec<LaneLayers> = (0..lanes).map(|_| Vec::new()).collect();
    let mut receivers: Vec<Option<Receiver<Event>>> = (0..layers.len()).map(|_| None).collect();
    for k in (0..layers.len()).rev() {
        let lane = (0..lanes).min_by_key(|&l| (load[l], l)).unwrap_or(0);
        load[lane] += layers[k].size;
        let (tx, rx) = mpsc::channel();
        plan[lane].push((k, tx));
        receivers[k] = Some(rx);
    }
    (
        plan,
        receivers
            .into_iter()
            .map(|r| r.expect("every layer is assigned"))
            .collect(),
    )
}

/// Runs one lane: its layers in order, each entry sent as it is read.
/// Stops at the first failure, or when the overlay pass stops listening.
pub fn run_lane(
    lanes: &Lanes,
    index: usize,
    layers: &[Layer<'_>],
    order: LaneLayers,
    select: Option<&dyn Select>,
) {
    let mut lane = Some(lanes.lane(index));
    let count = order.len();
    for (i, (k, to)) in order.into_iter().enumerate() {
        let read = read_layer(
            lane.as_mut().expect("taken only at the end"),
            &layers[k],
            &to,
            select,
        );
        // A layer is whole once its content is in the file: the lane's last
        // one waits for the lane's last write.
        let read = match read {
            Ok(true) if i + 1 == count => lane
                .take()
                .expect("taken once")
                .finish()
                .map(|()| true)
                .map_err(Error::from),
            other => other,
        };
        let event = match read {
            Ok(true) => Event::End,
            // The overlay pass is gone: an error there ends the build.
            Ok(false) => return,
            Err(e) => Event::Failed(e),
        };
        let failed = matches!(event, Event::Failed(_));
        if to.send(event).is_err() || failed {
            return;
        }
    }
}

/// Reads a layer into `to`; false when nobody listens any more.
fn read_layer(
    lane: &mut Lane<'_>,
    layer: &Layer<'_>,
    to: &Sender<Event>,
    select: Option<&dyn Select>,
) -> Result<bool, Error> {
    let mut reader: TarReader<_> = open(layer)?;
    while let Some(mut entry) = reader.next_entry().map_err(layer_err(layer))? {
        lane.advance(HEADER);
        let path = normalize(&entry.path);
        if !adjusted(layer, &path, &mut entry.meta) {
            continue;
        }
        let size = entry.size();
        let verdict = select.map_or(Verdict::Keep, |s| {
            s.select(&path, &entry.kind, size, &mut entry.meta)
        });
        let data = if entry.kind == EntryKind::File && verdict.skips_content() {
            // Its bytes are passed over, never written; the lane's position
            // moves on as if they were, so the layout stays the same.
            lane.advance(size);
            match verdict {
                Verdict::Empty(_) => Some(lane.file(&entry.path).finish()?),
                _ => None,
            }
        } else if entry.kind == EntryKind::File {
            let mut out = lane.file(&entry.path);
            reader
                .copy_data(&entry, &mut out)
                .map_err(layer_err(layer))?;
            Some(out.finish()?)
        } else {
            None
        };
        let item = Item {
            path,
            kind: entry.kind,
            meta: entry.meta,
            data,
            verdict,
            size,
        };
        if to.send(Event::Item(item)).is_err() {
            return Ok(false);
        }
    }
    reader.drain().map_err(layer_err(layer))?;
    Ok(true)
}
