//! Compiles flagd's evaluation API (`proto/flagd/evaluation/{v1,v2}`) into tonic server code.
//! Needs `protoc` and the well-known types (Debian's protobuf-compiler and libprotobuf-dev,
//! which `make deps` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/flagd/evaluation/v1/evaluation.proto",
        "proto/flagd/evaluation/v2/evaluation.proto",
    ];
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&protos, &["proto", "/usr/include"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
