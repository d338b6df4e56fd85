//! Generates the gRPC contract with a vendored `protoc`, so a fresh machine
//! needs nothing installed (issue: foundation, item 2).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/haven.proto");
    #[cfg(feature = "grpc")]
    generate()?;
    Ok(())
}

/// Without the `grpc` feature the generators are not even dependencies.
#[cfg(feature = "grpc")]
fn generate() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY of set_var: build scripts are single-threaded here.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/haven.proto"], &["proto"])?;
    Ok(())
}
