//! Pull and push progress: a bar per layer on a terminal (bytes, rate, ETA); plain lines per
//! state change and a periodic total otherwise; nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::oci::Digest;
use crate::store::pull::{Event, Observer};
use crate::store::push;

pub enum Progress {
    Quiet,
    Bars(Mutex<Bars>),
    Lines(Mutex<Lines>),
}

pub struct Bars {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    started: &'static str,
    done: &'static str,
}

pub struct Lines {
    layers: Vec<(Digest, u64)>,
    done: Vec<u64>,
    last_total: Instant,
    started_word: &'static str,
    done_word: &'static str,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress::with_words(quiet, "Downloading", "Pull complete")
    }

    /// The same display with other words for a layer started and finished (load's).
    pub fn with_words(quiet: bool, started: &'static str, done: &'static str) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stdout().is_terminal() {
            Progress::Bars(Mutex::new(Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()), bars: Vec::new(), started, done }))
        } else {
            Progress::Lines(Mutex::new(Lines { layers: Vec::new(), done: Vec::new(), last_total: Instant::now(), started_word: started, done_word: done }))
        }
    }

    pub fn finish(&self) {
        if let Progress::Bars(b) = self
            && let Ok(b) = b.lock() {
                for bar in &b.bars {
                    if !bar.is_finished() {
                        bar.abandon();
                    }
                }
            }
    }
}

fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl Observer for Progress {
    fn event(&self, e: Event<'_>) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => {
                let Ok(mut b) = b.lock() else { return };
                b.event(e);
            }
            Progress::Lines(l) => {
                let Ok(mut l) = l.lock() else { return };
                l.event(e);
            }
        }
    }
}

impl push::Observer for Progress {
    fn event(&self, e: push::Event<'_>) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => {
                let Ok(mut b) = b.lock() else { return };
                b.push_event(e);
            }
            Progress::Lines(l) => {
                let Ok(mut l) = l.lock() else { return };
                l.push_event(e);
            }
        }
    }
}

impl Bars {
    fn push_event(&mut self, e: push::Event<'_>) {
        use push::Event as P;
        match e {
            P::Layers(layers) => self.event(Event::Layers(layers)),
            P::Exists(i) => self.finish(i, "Layer already exists"),
            P::Mounted(i, from) => {
                if let Some(bar) = self.bars.get(i) {
                    bar.set_style(ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
                    bar.finish_with_message(format!("Mounted from {from}"));
                }
            }
            P::Compressing(i) => self.message(i, "Compressing"),
            P::Started(i, at, size) => {
                if let Some(bar) = self.bars.get(i) {
                    bar.set_length(size);
                    bar.set_position(at);
                    bar.reset_eta();
                }
                self.message(i, if at > 0 { "Resuming" } else { "Pushing" });
            }
            P::Progress(i, n) => self.event(Event::Progress(i, n)),
            P::Retrying(i, _) => self.message(i, "Retrying"),
            P::Pushed(i, _) => self.finish(i, "Pushed"),
        }
    }

    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Layers(layers) => {
                // Parsed once per pull, not on every progress event (one per network read).
                let style =
                    ProgressStyle::with_template("{prefix}: {msg:<16} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                self.bars = layers
                    .iter()
                    .map(|(d, size)| {
                        let bar = self.multi.add(ProgressBar::new(*size));
                        bar.set_style(style.clone());
                        bar.set_prefix(d.short().to_string());
                        bar.set_message("Waiting");
                        bar
                    })
                    .collect();
            }
            Event::Exists(i) => self.finish(i, "Already exists"),
            Event::Waiting(i) => self.message(i, "Waiting"),
            Event::Started(i, at) => {
                if let Some(bar) = self.bars.get(i) {
                    bar.set_position(at);
                    bar.reset_eta();
                }
                self.message(i, if at > 0 { "Resuming" } else { self.started });
            }
            Event::Progress(i, n) => {
                if let Some(bar) = self.bars.get(i) {
                    bar.set_position(n);
                }
            }
            Event::Retrying(i, _) => self.message(i, "Retrying"),
            Event::Verifying(i) => self.message(i, "Verifying"),
            Event::Complete(i) => self.finish(i, self.done),
        }
    }

    fn message(&self, i: usize, m: &'static str) {
        if let Some(bar) = self.bars.get(i) {
            bar.set_message(m);
        }
    }

    fn finish(&self, i: usize, m: &'static str) {
        if let Some(bar) = self.bars.get(i) {
            bar.set_style(ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar.finish_with_message(m);
        }
    }
}

impl Lines {
    /// Layer `i` is at byte `n`; every 5 s a line with the total so far.
    fn progress(&mut self, i: usize, n: u64, verb: &str) {
        if let Some(d) = self.done.get_mut(i) {
            *d = n;
        }
        if self.last_total.elapsed() >= Duration::from_secs(5) {
            self.last_total = Instant::now();
            let total: u64 = self.layers.iter().map(|l| l.1).sum();
            line(&format!("{verb} {} of {}", mib(self.done.iter().sum()), mib(total)));
        }
    }

    fn push_event(&mut self, e: push::Event<'_>) {
        use push::Event as P;
        let short = |layers: &[(Digest, u64)], i: usize| layers.get(i).map(|(d, _)| d.short().to_string()).unwrap_or_default();
        match e {
            P::Layers(layers) => self.event(Event::Layers(layers)),
            P::Exists(i) => line(&format!("{}: Layer already exists", short(&self.layers, i))),
            P::Mounted(i, from) => line(&format!("{}: Mounted from {from}", short(&self.layers, i))),
            P::Compressing(i) => line(&format!("{}: Compressing again", short(&self.layers, i))),
            P::Started(i, 0, size) => {
                if let Some(l) = self.layers.get_mut(i) {
                    l.1 = size;
                }
                line(&format!("{}: Pushing ({})", short(&self.layers, i), mib(size)));
            }
            P::Started(i, at, _) => line(&format!("{}: Resuming at byte {at}", short(&self.layers, i))),
            P::Progress(i, n) => self.progress(i, n, "Pushed"),
            P::Retrying(i, why) => line(&format!("{}: Retrying after: {why}", short(&self.layers, i))),
            P::Pushed(i, None) => line(&format!("{}: Pushed", short(&self.layers, i))),
            P::Pushed(i, Some(d)) => line(&format!("{}: Pushed as {d} (compressed again)", short(&self.layers, i))),
        }
    }

    fn event(&mut self, e: Event<'_>) {
        let short = |layers: &[(Digest, u64)], i: usize| layers.get(i).map(|(d, _)| d.short().to_string()).unwrap_or_default();
        match e {
            Event::Layers(layers) => {
                self.layers = layers.to_vec();
                self.done = vec![0; layers.len()];
            }
            Event::Exists(i) => line(&format!("{}: Already exists", short(&self.layers, i))),
            Event::Waiting(_) => {}
            Event::Started(i, 0) => {
                let size = self.layers.get(i).map_or(0, |l| l.1);
                line(&format!("{}: {} ({})", short(&self.layers, i), self.started_word, mib(size)));
            }
            Event::Started(i, at) => line(&format!("{}: Resuming at byte {at}", short(&self.layers, i))),
            Event::Progress(i, n) => self.progress(i, n, "Downloaded"),
            Event::Retrying(i, why) => line(&format!("{}: Retrying after: {why}", short(&self.layers, i))),
            Event::Verifying(i) => line(&format!("{}: Verifying", short(&self.layers, i))),
            Event::Complete(i) => line(&format!("{}: {}", short(&self.layers, i), self.done_word)),
        }
    }
}
