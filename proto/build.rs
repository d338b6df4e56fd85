//! Generates the gRPC contract with a vendored `protoc`, so a fresh machine
//! needs nothing installed (issue: foundation, item 2).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/haven.proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    // SAFETY of set_var: build scripts are single-threaded here.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/haven.proto"], &["proto"])?;
    Ok(())
}
