//! Compiles `proto/*.proto` into Rust without a system `protoc`: `protox` parses the files into a
//! `FileDescriptorSet`, `tonic-prost-build` generates the code from it, and the encoded set is kept
//! in `OUT_DIR` for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tracker.proto", "proto/peer.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("p2pshare_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Block payloads become `bytes::Bytes`: no copy between the socket and the file.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
