//! A progress bar on stderr when it is a terminal; nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar over `total` bytes of input, counting entries too.
    pub fn new(total: u64, what: &str) -> Bar {
        Bar::styled(
            total,
            what,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {prefix} entries, eta {eta}",
        )
    }

    /// A bar over `total` bytes.
    pub fn bytes(total: u64, what: &str) -> Bar {
        Bar::styled(
            total,
            what,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, eta {eta}",
        )
    }

    /// A bar over 0 to 100 percent, labelled with the stage.
    pub fn percent(what: &str) -> Bar {
        Bar::styled(100, what, "{msg:12} [{bar:30}] {pos}%")
    }

    pub fn show(&self, percent: u64, what: &str) {
        self.0.set_position(percent);
        self.0.set_message(what.to_string());
    }

    fn styled(total: u64, what: &str, template: &str) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar(bar)
    }

    pub fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl builderd_import::Progress for Bar {
    fn update(&self, bytes: u64, entries: u64) {
        self.0.set_position(bytes);
        self.0.set_prefix(entries.to_string());
    }
}
