//! Heat maps as pictures: a montage of axial slices, the windowed scan in grey, the map in
//! colour over it, a colour bar as legend; written as PNG (feature `pictures`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::preprocess::{Volume, Window};

/// Which axial slices a [`Montage`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slices {
    /// Evenly spaced through the volume (the centres of equal slabs).
    Even,
    /// Consecutive slices centred on the map's hottest slice (where it reaches its maximum).
    AroundMaximum,
}

/// A grid of axial slices with a heat map over them.
///
/// Each tile is one slice (height down, width across, as stored), each voxel drawn as a
/// `scale` x `scale` block, the slice's index in its top-left corner. The scan goes through
/// `window` into grey; the map (values `0..=1`) is drawn in a blue-green-yellow-red colour
/// map where it is at least `threshold`, blended over the grey with opacity `opacity * value`.
/// A colour bar from 0 (bottom) to 1 (top) on the right is the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Montage {
    /// Tiles across.
    pub columns: usize,
    /// Tiles down.
    pub rows: usize,
    /// The Hounsfield window of the grey scan.
    pub window: Window,
    /// Which slices.
    pub slices: Slices,
    /// Pixels per voxel; 0 picks the largest that keeps a tile within 256 pixels (at least 1).
    pub scale: usize,
    /// Opacity of the map at value 1.
    pub opacity: f32,
    /// Map values below this are not drawn.
    pub threshold: f32,
}

/// An RGB picture, 8 bits per channel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes: red, green, blue per pixel, rows top to bottom.
    pub rgb: Vec<u8>,
}

/// Gap between tiles and around the picture, pixels.
const GAP: usize = 4;
/// Width of the colour bar and of the space for its labels.
const BAR: usize = 16;
const LABELS: usize = 4 * 4 + 2 * GAP;

impl Montage {
    /// 4 x 4 evenly spaced slices through `window`, map drawn from 0.2 at opacity 0.6.
    pub fn new(window: Window) -> Self {
        Self {
            columns: 4,
            rows: 4,
            window,
            slices: Slices::Even,
            scale: 0,
            opacity: 0.6,
            threshold: 0.2,
        }
    }

    /// With `columns` x `rows` tiles.
    pub fn with_grid(mut self, columns: usize, rows: usize) -> Self {
        (self.columns, self.rows) = (columns, rows);
        self
    }

    /// With slices picked by `slices`.
    pub fn with_slices(mut self, slices: Slices) -> Self {
        self.slices = slices;
        self
    }

    /// The slice indices the montage shows for a map of `depth` slices (fewer than the grid
    /// when the volume has fewer slices).
    pub fn slice_indices(&self, map: &Volume) -> Vec<usize> {
        let depth = map.shape[0];
        let tiles = (self.columns * self.rows).min(depth);
        match self.slices {
            Slices::Even => (0..tiles).map(|i| (2 * i + 1) * depth / (2 * tiles)).collect(),
            Slices::AroundMaximum => {
                let plane = map.shape[1] * map.shape[2];
                let peak = |d: usize| map.data[d * plane..][..plane].iter().copied().fold(f32::MIN, f32::max);
                // The first slice holding the maximum (ties, e.g. an empty map, go to the front).
                let hottest = (0..depth).fold(0, |best, d| if peak(d) > peak(best) { d } else { best });
                let first = hottest.saturating_sub(tiles / 2).min(depth - tiles);
                (first..first + tiles).collect()
            }
        }
    }

    /// Draws `map` over `scan` (both on one grid, the scan in Hounsfield units).
    ///
    /// # Errors
    /// [`Error::InvalidVolume`] if the two differ in shape, the map holds a value outside
    /// `0..=1` (or NaN), either volume's fields disagree, or the grid has no tile.
    pub fn render(&self, scan: &Volume, map: &Volume) -> Result<Picture> {
        let invalid = |what: String| Error::InvalidVolume { what };
        if scan.shape != map.shape {
            return Err(invalid(format!(
                "the map's shape {:?} is not the scan's {:?}; bring it onto the scan's grid first",
                map.shape, scan.shape
            )));
        }
        for v in [scan, map] {
            if v.data.len() != v.shape.iter().product::<usize>() || v.data.is_empty() {
                return Err(invalid(format!("{} values for shape {:?}", v.data.len(), v.shape)));
            }
        }
        if let Some(bad) = map.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(invalid(format!("map value {bad}: a heat map holds values in 0..=1")));
        }
        if self.columns == 0 || self.rows == 0 {
            return Err(invalid(format!("a grid of {} x {} tiles", self.columns, self.rows)));
        }
        let [_, h, w] = map.shape;
        let scale = if self.scale > 0 {
            self.scale
        } else {
            (256 / h.max(w)).max(1)
        };
        let (tile_h, tile_w) = (h * scale, w * scale);
        let grid_w = GAP + self.columns * (tile_w + GAP);
        let height = GAP + self.rows * (tile_h + GAP);
        let width = grid_w + BAR + LABELS;
        let mut picture = Picture {
            width,
            height,
            rgb: vec![0; width * height * 3],
        };
        for (tile, slice) in self.slice_indices(map).into_iter().enumerate() {
            let (top, left) = (
                GAP + tile / self.columns * (tile_h + GAP),
                GAP + tile % self.columns * (tile_w + GAP),
            );
            for y in 0..tile_h {
                for x in 0..tile_w {
                    let voxel = (slice * h + y / scale) * w + x / scale;
                    let grey = self.window.apply(scan.data[voxel]) * 255.0;
                    let value = map.data[voxel];
                    let colour = if value >= self.threshold {
                        let alpha = self.opacity * value;
                        colour_map(value).map(|c| grey * (1.0 - alpha) + c * alpha)
                    } else {
                        [grey; 3]
                    };
                    picture.set(left + x, top + y, colour.map(|c| c.round().clamp(0.0, 255.0) as u8));
                }
            }
            picture.text(left + 2, top + 2, &slice.to_string());
        }
        // The legend: the colour map from 1 (top) to 0 (bottom), labelled.
        let (bar_top, bar_bottom) = (GAP + 4, height - GAP - 4);
        for y in bar_top..bar_bottom {
            let value = (bar_bottom - 1 - y) as f32 / (bar_bottom - bar_top - 1).max(1) as f32;
            let colour = colour_map(value).map(|c| c.round() as u8);
            for x in grid_w..grid_w + BAR {
                picture.set(x, y, colour);
            }
        }
        let label_x = grid_w + BAR + GAP;
        picture.text(label_x, bar_top, "1");
        picture.text(label_x, (bar_top + bar_bottom) / 2 - 3, ".5");
        picture.text(label_x, bar_bottom - 7, "0");
        Ok(picture)
    }
}

/// Blue (0) through cyan, green and yellow to red (1), as 0..255 floats: piecewise linear
/// between five anchors.
fn colour_map(value: f32) -> [f32; 3] {
    const ANCHORS: [[f32; 3]; 5] = [
        [0.0, 0.0, 160.0],
        [0.0, 160.0, 255.0],
        [40.0, 230.0, 80.0],
        [255.0, 220.0, 0.0],
        [230.0, 0.0, 0.0],
    ];
    let x = value.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let t = x - i as f32;
    [0, 1, 2].map(|c| ANCHORS[i][c] * (1.0 - t) + ANCHORS[i + 1][c] * t)
}

/// 3 x 5 pixel glyphs of the digits and the point, one row per 3-bit number (top first).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        _ => return None,
    })
}

impl Picture {
    fn set(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = (y * self.width + x) * 3;
            self.rgb[at..at + 3].copy_from_slice(&rgb);
        }
    }

    /// White text at twice the glyph size on a black box, top-left corner at `(x, y)`.
    fn text(&mut self, x: usize, y: usize, text: &str) {
        let glyphs: Vec<[u8; 5]> = text.chars().filter_map(glyph).collect();
        for dy in 0..12 {
            for dx in 0..glyphs.len() * 8 + 2 {
                self.set(x + dx, y + dy, [0; 3]);
            }
        }
        for (i, rows) in glyphs.iter().enumerate() {
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            self.set(x + 1 + i * 8 + col * 2 + px, y + 1 + row * 2 + py, [255; 3]);
                        }
                    }
                }
            }
        }
    }

    /// Writes the picture as an 8-bit RGB PNG.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written or the encoder fails.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let encoding = |err: png::EncodingError| io(std::io::Error::other(err.to_string()));
        let (width, height) = (u32::try_from(self.width), u32::try_from(self.height));
        let (Ok(width), Ok(height)) = (width, height) else {
            return Err(io(std::io::Error::other("picture too large for PNG")));
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(encoding)?;
        writer.write_image_data(&self.rgb).map_err(encoding)?;
        writer.finish().map_err(encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_slices_are_slab_centres_and_around_maximum_follows_the_map() {
        let mut map = Volume::new(vec![0.0; 40 * 4], [40, 2, 2], [1.0; 3]).unwrap();
        let montage = Montage::new(Window::LUNG).with_grid(2, 2);
        assert_eq!(montage.slice_indices(&map), [5, 15, 25, 35]);
        map.data[33 * 4 + 1] = 1.0;
        let around = montage.with_slices(Slices::AroundMaximum);
        assert_eq!(around.slice_indices(&map), [31, 32, 33, 34]);
        map.data[33 * 4 + 1] = 0.0;
        map.data[39 * 4] = 0.5;
        assert_eq!(around.slice_indices(&map), [36, 37, 38, 39]);
        let short = Volume::new(vec![0.0; 3 * 4], [3, 2, 2], [1.0; 3]).unwrap();
        assert_eq!(around.slice_indices(&short), [0, 1, 2]);
    }

    #[test]
    fn colour_map_runs_blue_to_red() {
        assert_eq!(colour_map(0.0), [0.0, 0.0, 160.0]);
        assert_eq!(colour_map(1.0), [230.0, 0.0, 0.0]);
        assert_eq!(colour_map(0.75), [255.0, 220.0, 0.0]);
    }

    #[test]
    fn maps_outside_unit_range_and_other_grids_are_refused() {
        let scan = Volume::new(vec![0.0; 8], [2, 2, 2], [1.0; 3]).unwrap();
        let mut map = scan.clone();
        map.data[3] = 1.5;
        assert!(matches!(
            Montage::new(Window::LUNG).render(&scan, &map),
            Err(Error::InvalidVolume { .. })
        ));
        map.data[3] = f32::NAN;
        assert!(matches!(
            Montage::new(Window::LUNG).render(&scan, &map),
            Err(Error::InvalidVolume { .. })
        ));
        let other = Volume::new(vec![0.0; 4], [1, 2, 2], [1.0; 3]).unwrap();
        assert!(matches!(
            Montage::new(Window::LUNG).render(&scan, &other),
            Err(Error::InvalidVolume { .. })
        ));
    }
}
