//! nbdkit plugin 'multihttp': placeholder until its issue lands.
