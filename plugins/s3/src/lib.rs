//! nbdkit plugin `s3`: a disk as one object per chunk in any S3-compatible
//! store (Ceph RGW, Garage, MinIO, AWS), on the shared chunk-store core.

mod backend;
mod client;
mod config;
mod credentials;
mod keys;
mod lease_object;
mod plugin;
