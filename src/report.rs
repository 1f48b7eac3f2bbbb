//! TODO(skeleton): report
