//! nbdkit plugin 'sharded': placeholder until its issue lands.
