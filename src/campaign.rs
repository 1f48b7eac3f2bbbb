//! TODO(skeleton): campaign
