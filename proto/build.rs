fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=flotilla/v1");
    tonic_prost_build::configure().compile_protos(&["flotilla/v1/cluster.proto"], &["."])?;
    Ok(())
}
