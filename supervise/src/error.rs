//! The error of this crate: a child that did not become ready.

use crate::status::{ChildState, ExitStatus};

/// [`crate::SupervisedChild::ready`] ended without the child running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The child's name.
    pub name: String,
    /// Where it ended up (`failed` or `stopped`).
    pub state: ChildState,
    /// Why, when known.
    pub reason: Option<String>,
    /// How its last process ended.
    pub last_exit: Option<ExitStatus>,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}", self.name, self.state)?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotReady {}
