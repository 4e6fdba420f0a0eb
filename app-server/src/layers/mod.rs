//! The app server's own layers, inside the pipeline's (metrics, auth, rate
//! limits): [`poll`] parks long polls, [`once`] runs writes once.

pub mod once;
pub mod poll;
