//! Exporters: gmon-compatible stdout log lines and the Prometheus endpoint.

pub mod logfmt;
pub mod otlp;
pub mod prometheus;

use crate::model::{Goroutine, Sink};

/// Sends every update to each sink in turn.
pub struct Fanout<'a>(pub Vec<&'a mut dyn Sink>);

impl Sink for Fanout<'_> {
    fn created(&mut self, g: &Goroutine) {
        for s in self.0.iter_mut() {
            s.created(g);
        }
    }
    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        for s in self.0.iter_mut() {
            s.exited(g, exited_ns);
        }
    }
    fn site_gone(&mut self, site_id: u64) {
        for s in self.0.iter_mut() {
            s.site_gone(site_id);
        }
    }
    fn process_gone(&mut self, pid: u32) {
        for s in self.0.iter_mut() {
            s.process_gone(pid);
        }
    }
}
