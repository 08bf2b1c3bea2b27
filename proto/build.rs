fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cairn");
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBuffers")
        .compile_protos(
            &[
                "cairn/v1/report.proto",
                "cairn/v1/server.proto",
                "cairn/v1/nodes.proto",
                "cairn/v1/enroll.proto",
                "cairn/v1/fleet.proto",
                "cairn/v1/dashboard.proto",
            ],
            &["."],
        )?;
    Ok(())
}
