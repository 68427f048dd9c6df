//! How `builderd build` shows a build's events: bars and lines for a person
//! (`Terminal`), or one JSON object a line on stderr for a program
//! (`JsonLines`, what the service reads from each build process it runs).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use builderd_build::{Event, Level, Reporter, Usage};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars on a terminal (a bar per layer download, one for the writing) and
/// log lines; on anything else, the log lines alone.
pub struct Terminal {
    bars: MultiProgress,
    downloads: Mutex<HashMap<usize, ProgressBar>>,
    writing: Mutex<Option<ProgressBar>>,
    terminal: bool,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the template is valid")
        .progress_chars("=> ")
}

impl Terminal {
    pub fn new() -> Terminal {
        Terminal {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            downloads: Mutex::default(),
            writing: Mutex::default(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, text: String) {
        if self.terminal {
            let _ = self.bars.println(text);
        } else {
            eprintln!("{text}");
        }
    }
}

impl Reporter for Terminal {
    fn report(&self, event: Event) {
        match event {
            Event::Log(l) => match l.level {
                Level::Info if self.terminal => {}
                Level::Info => self.line(format!("builderd: {}", l.message)),
                Level::Warn => self.line(format!("builderd: warning: {}", l.message)),
            },
            Event::Retry(r) => self.line(format!("builderd: warning: {}", r.notice())),
            Event::StepStarted(s) => self.line(format!("step {}: $ {}", s.index + 1, s.command)),
            Event::StepOutput(o) => self.line(o.line),
            Event::StepFinished(r) => self.line(format!(
                "step {}: exit code {} after {:.2} s",
                r.index + 1,
                r.exit_code,
                r.duration_ms as f64 / 1000.0
            )),
            Event::Download(d) if self.terminal => {
                let mut bars = self.downloads.lock().unwrap();
                let bar = bars.entry(d.layer).or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new(d.total));
                    bar.set_style(style(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    ));
                    let short = d.digest.strip_prefix("sha256:").unwrap_or(&d.digest);
                    bar.set_message(format!("layer {}", &short[..short.len().min(12)]));
                    bar
                });
                bar.set_position(d.done);
                if d.finished {
                    bar.finish_and_clear();
                }
            }
            Event::Progress(p) if self.terminal && p.step == "writing" => {
                let mut writing = self.writing.lock().unwrap();
                let bar = writing.get_or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new(p.total));
                    bar.set_style(style(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, eta {eta}",
                    ));
                    bar.set_message("writing");
                    bar
                });
                bar.set_position(p.done);
            }
            Event::Progress(p) if p.step == "written" => {
                if let Some(bar) = self.writing.lock().unwrap().take() {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

/// One JSON object a line on stderr. Progress at most every 250 ms (the
/// service stores each one); `go_on` waits for the word "build" on stdin.
pub struct JsonLines {
    last_progress: Mutex<Option<Instant>>,
}

/// Progress lines at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines {
            last_progress: Mutex::new(None),
        }
    }

    fn emit(&self, event: &Event) {
        // One write a line, so lines from threads never interleave.
        if let Ok(text) = serde_json::to_string(event) {
            let _ = std::io::stderr()
                .lock()
                .write_all(format!("{text}\n").as_bytes());
        }
    }

    /// What this build process (and the processes it waited for) used.
    pub fn report_usage(&self) {
        let (self_cpu, self_rss) = rusage(libc::RUSAGE_SELF);
        let (child_cpu, child_rss) = rusage(libc::RUSAGE_CHILDREN);
        self.emit(&Event::Usage(Usage {
            cpu_ms: self_cpu + child_cpu,
            peak_memory_bytes: self_rss.max(child_rss),
            disk_written_bytes: written_bytes(),
        }));
    }
}

impl Reporter for JsonLines {
    fn report(&self, event: Event) {
        // Per-layer downloads are the terminal's; the service follows the
        // overall progress.
        if matches!(event, Event::Download(_)) {
            return;
        }
        if let Event::Progress(p) = &event {
            let mut last = self.last_progress.lock().unwrap();
            let last_word = p.step == "written";
            if !last_word && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.emit(&event);
    }

    fn go_on(&self) -> bool {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok() && line.trim() == "build"
    }
}

/// CPU milliseconds (user and system) and peak resident bytes.
fn rusage(who: libc::c_int) -> (u64, u64) {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `u` is a live, writable rusage.
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return (0, 0);
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    (ms(u.ru_utime) + ms(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

/// Bytes this process caused to be written to storage (/proc/self/io).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
