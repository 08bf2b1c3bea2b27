fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cairn");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&["cairn/v1/report.proto"], &["."])?;
    Ok(())
}
