//! Test fixture: a map that, for a value `N`, allocates and touches `N` MiB of
//! memory (and returns the value). Used to check memory limits.

use weir_guest::{Error, Record};

#[weir_guest::map]
fn hog(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let mib: usize = record.value_str()?.trim().parse().map_err(Error::msg)?;
    let mut block = vec![0u8; mib << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
    Ok(record.value().to_vec())
}
