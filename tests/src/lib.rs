//! Shared helpers for flotilla's workspace-level tests: where the demo models live, and a
//! clear failure when they have not been fetched.
