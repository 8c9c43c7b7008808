//! Progress reports from long library work (streaming passes, the eigendecomposition,
//! selection) without the library knowing about the terminal: the CLI draws them as bars,
//! the Python package may forward them, tests ignore them.

/// Lets the library report progress without knowing about the terminal.
pub trait Progress {
    /// A stage of `total` units starts.
    fn start(&mut self, stage: &str, total: u64);
    /// `n` more units are done.
    fn advance(&mut self, n: u64);
    /// The current stage is over.
    fn finish(&mut self);
    /// Something the user should know now rather than at the end, before a long piece of
    /// work (the route a layer will take and the memory it plans for). Ignored by default.
    fn note(&mut self, _text: &str) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _stage: &str, _total: u64) {}
    fn advance(&mut self, _n: u64) {}
    fn finish(&mut self) {}
}

/// Progress of one part of a larger job (a layer of a network): its stages reach `inner` with
/// `label` before them ("fc2: tridiagonal reduction"), so that a bar says which part it is.
pub struct Labelled<'a> {
    inner: &'a mut dyn Progress,
    label: &'a str,
}

impl<'a> Labelled<'a> {
    /// Stages of `inner` labelled with `label`.
    pub fn new(inner: &'a mut dyn Progress, label: &'a str) -> Self {
        Self { inner, label }
    }
}

impl Progress for Labelled<'_> {
    fn start(&mut self, stage: &str, total: u64) {
        if stage.contains(self.label) {
            self.inner.start(stage, total);
        } else {
            self.inner.start(&format!("{}: {stage}", self.label), total);
        }
    }
    fn advance(&mut self, n: u64) {
        self.inner.advance(n);
    }
    fn finish(&mut self) {
        self.inner.finish();
    }
    fn note(&mut self, text: &str) {
        self.inner.note(&format!("{}: {text}", self.label));
    }
}
