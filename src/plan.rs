//! TODO(skeleton): plan
