//! The server's output, drained by reader threads and kept for failing tests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// How many lines of the server's output are kept for a failing test to print.
const TAIL_LINES: usize = 300;

/// The tail of the server's stdout and stderr, filled by two reader threads.
///
/// A mutex (not a channel) because the threads only append and a failing test reads
/// the whole tail at once; the threads also keep the pipes drained so the server never
/// blocks on a full pipe.
#[derive(Clone, Default)]
pub struct Output {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// The reader threads, joined by [`Output::finish`] once the process is gone.
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Output {
    /// Starts the reader threads; the receiver gets the port from the `listening` line.
    pub fn watch(
        &self,
        stdout: impl Read + Send + 'static,
        stderr: impl Read + Send + 'static,
    ) -> oneshot::Receiver<u16> {
        let (port_tx, port_rx) = oneshot::channel();
        let lines = self.clone();
        let out_reader = std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = listening_port(&line) {
                    if let Some(tx) = port_tx.take() {
                        let _ = tx.send(port);
                    }
                }
                lines.push(format!("[stdout] {line}"));
            }
        });
        let lines = self.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.push(line);
            }
        });
        self.readers
            .lock()
            .expect("readers lock")
            .extend([out_reader, err_reader]);
        port_rx
    }

    /// Waits until the reader threads took the last lines: call it once the process
    /// has exited (its pipes then close and the threads end).
    pub fn finish(&self) {
        let readers = std::mem::take(&mut *self.readers.lock().expect("readers lock"));
        for reader in readers {
            reader.join().expect("an output reader thread panicked");
        }
    }

    fn push(&self, line: String) {
        let mut lines = self.lines.lock().expect("output lock");
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn tail(&self) -> String {
        let lines = self.lines.lock().expect("output lock");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The port of `switchboard listening on http://127.0.0.1:PORT`, if `line` is that line.
fn listening_port(line: &str) -> Option<u16> {
    let rest = line
        .trim()
        .strip_prefix("switchboard listening on http://")?;
    rest.rsplit(':').next()?.parse().ok()
}
