//! TODO(skeleton): recipients
