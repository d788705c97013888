//! The registry of published checkpoints [`ResNet3d::from_pretrained`](crate::ResNet3d::from_pretrained)
//! knows by name, each with where it is and its SHA-256: torchvision's ImageNet ResNets (V1 and
//! V2) and Kinetics video ResNets at download.pytorch.org, timm's ResNets and MedicalNet's
//! files on the Hugging Face Hub.

/// What a published checkpoint holds, which decides how it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainedKind {
    /// A 2-D ImageNet ResNet: inflated as the configuration says
    /// ([`ResNet3d::from_imagenet`](crate::ResNet3d::from_imagenet)).
    ImageNet,
    /// A native 3-D network ([`ResNet3d::from_checkpoint`](crate::ResNet3d::from_checkpoint)).
    Native3d,
}

/// Where a published checkpoint is, and what its bytes hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A plain address (`https://...`), cached under the address's file name.
    Url {
        /// The address.
        url: &'static str,
        /// Lower-case hex of the file's SHA-256, or its first digits (at least 8).
        sha256: &'static str,
    },
    /// A file of a Hugging Face Hub model repository, cached as the Hub's own clients cache it.
    Hub {
        /// The repository, `owner/name`.
        repo: &'static str,
        /// The file's name in the repository (no folders).
        file: &'static str,
        /// A branch or tag, or a 40-digit commit.
        revision: &'static str,
        /// The file's whole SHA-256 in lower-case hex, when it is known in advance; the Hub's
        /// own name for the file (its Git LFS SHA-256) is checked in any case.
        sha256: Option<&'static str>,
    },
}

/// One published checkpoint: its name, its source and how it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    /// The name [`ResNet3d::from_pretrained`](crate::ResNet3d::from_pretrained) takes, e.g.
    /// `resnet50.tv2_in1k` or `timm/resnet50.a1_in1k`.
    pub name: &'static str,
    /// Where it is.
    pub source: Source,
    /// How it loads.
    pub kind: PretrainedKind,
}

macro_rules! tv {
    ($name:literal, $file:literal, $sha:literal, $kind:ident) => {
        Pretrained {
            name: $name,
            source: Source::Url {
                url: concat!("https://download.pytorch.org/models/", $file),
                sha256: $sha,
            },
            kind: PretrainedKind::$kind,
        }
    };
}

macro_rules! timm {
    ($name:literal) => {
        Pretrained {
            name: concat!("timm/", $name),
            source: Source::Hub {
                repo: concat!("timm/", $name),
                file: "model.safetensors",
                revision: "main",
                sha256: None,
            },
            kind: PretrainedKind::ImageNet,
        }
    };
}

macro_rules! medicalnet {
    ($name:literal, $repo:literal, $file:literal, $sha:literal) => {
        Pretrained {
            name: $name,
            source: Source::Hub {
                repo: concat!("TencentMedicalNet/", $repo),
                file: $file,
                revision: "main",
                sha256: Some($sha),
            },
            kind: PretrainedKind::Native3d,
        }
    };
}

/// The registry.
///
/// - torchvision (`torchvision.models.ResNet*_Weights`, `torchvision.models.video.*_Weights`):
///   `resnet50.tv_in1k` (`IMAGENET1K_V1`), `resnet50.tv2_in1k` (`IMAGENET1K_V2`), ...,
///   `r3d_18.kinetics400`; checked against the SHA-256 digits in torchvision's file names, as
///   torchvision checks them.
/// - timm on the Hugging Face Hub (`timm/<name>`, `model.safetensors`): every ImageNet-1k
///   weight timm 1.0.22 publishes for its plain `resnet18` .. `resnet152` (the torchvision
///   layout); checked against the SHA-256 the Hub names the file by.
/// - MedicalNet on the Hub (`TencentMedicalNet/MedicalNet-Resnet<depth>`), loaded with
///   [`ResNet3dConfig::medicalnet`](crate::ResNet3dConfig::medicalnet): `medicalnet/resnet_10`
///   .. `medicalnet/resnet_200`, and `medicalnet/resnet_<d>_23dataset` for 10, 18, 34 and 50;
///   checked against whole SHA-256 digests published with the medmetric package's manifest
///   (`medmetric/weights/medicalnet.yaml`) and against the Hub's own.
pub const PRETRAINED: &[Pretrained] = &[
    tv!("resnet18.tv_in1k", "resnet18-f37072fd.pth", "f37072fd", ImageNet),
    tv!("resnet34.tv_in1k", "resnet34-b627a593.pth", "b627a593", ImageNet),
    tv!("resnet50.tv_in1k", "resnet50-0676ba61.pth", "0676ba61", ImageNet),
    tv!("resnet50.tv2_in1k", "resnet50-11ad3fa6.pth", "11ad3fa6", ImageNet),
    tv!("resnet101.tv_in1k", "resnet101-63fe2227.pth", "63fe2227", ImageNet),
    tv!("resnet101.tv2_in1k", "resnet101-cd907fc2.pth", "cd907fc2", ImageNet),
    tv!("resnet152.tv_in1k", "resnet152-394f9c45.pth", "394f9c45", ImageNet),
    tv!("resnet152.tv2_in1k", "resnet152-f82ba261.pth", "f82ba261", ImageNet),
    tv!("r3d_18.kinetics400", "r3d_18-b3b3357e.pth", "b3b3357e", Native3d),
    tv!("mc3_18.kinetics400", "mc3_18-a90a0ba3.pth", "a90a0ba3", Native3d),
    tv!(
        "r2plus1d_18.kinetics400",
        "r2plus1d_18-91a641e6.pth",
        "91a641e6",
        Native3d
    ),
    timm!("resnet18.a1_in1k"),
    timm!("resnet18.a2_in1k"),
    timm!("resnet18.a3_in1k"),
    timm!("resnet18.tv_in1k"),
    timm!("resnet18.gluon_in1k"),
    timm!("resnet18.fb_ssl_yfcc100m_ft_in1k"),
    timm!("resnet18.fb_swsl_ig1b_ft_in1k"),
    timm!("resnet34.a1_in1k"),
    timm!("resnet34.a2_in1k"),
    timm!("resnet34.a3_in1k"),
    timm!("resnet34.bt_in1k"),
    timm!("resnet34.tv_in1k"),
    timm!("resnet34.gluon_in1k"),
    timm!("resnet34.ra4_e3600_r224_in1k"),
    timm!("resnet50.a1_in1k"),
    timm!("resnet50.a1h_in1k"),
    timm!("resnet50.a2_in1k"),
    timm!("resnet50.a3_in1k"),
    timm!("resnet50.am_in1k"),
    timm!("resnet50.b1k_in1k"),
    timm!("resnet50.b2k_in1k"),
    timm!("resnet50.bt_in1k"),
    timm!("resnet50.c1_in1k"),
    timm!("resnet50.c2_in1k"),
    timm!("resnet50.d_in1k"),
    timm!("resnet50.ra_in1k"),
    timm!("resnet50.ram_in1k"),
    timm!("resnet50.tv_in1k"),
    timm!("resnet50.tv2_in1k"),
    timm!("resnet50.gluon_in1k"),
    timm!("resnet50.fb_ssl_yfcc100m_ft_in1k"),
    timm!("resnet50.fb_swsl_ig1b_ft_in1k"),
    timm!("resnet101.a1_in1k"),
    timm!("resnet101.a1h_in1k"),
    timm!("resnet101.a2_in1k"),
    timm!("resnet101.a3_in1k"),
    timm!("resnet101.tv_in1k"),
    timm!("resnet101.tv2_in1k"),
    timm!("resnet101.gluon_in1k"),
    timm!("resnet152.a1_in1k"),
    timm!("resnet152.a1h_in1k"),
    timm!("resnet152.a2_in1k"),
    timm!("resnet152.a3_in1k"),
    timm!("resnet152.tv_in1k"),
    timm!("resnet152.tv2_in1k"),
    timm!("resnet152.gluon_in1k"),
    medicalnet!(
        "medicalnet/resnet_10",
        "MedicalNet-Resnet10",
        "resnet_10.pth",
        "2824951eaef30e115929b89bec72342380b08d14792bda1449974ac849e497c0"
    ),
    medicalnet!(
        "medicalnet/resnet_10_23dataset",
        "MedicalNet-Resnet10",
        "resnet_10_23dataset.pth",
        "afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605"
    ),
    medicalnet!(
        "medicalnet/resnet_18",
        "MedicalNet-Resnet18",
        "resnet_18.pth",
        "38b3a17444c5c18a795355a868e6a2d9ce9318054067f5373d337f55c0f61da3"
    ),
    medicalnet!(
        "medicalnet/resnet_18_23dataset",
        "MedicalNet-Resnet18",
        "resnet_18_23dataset.pth",
        "61224f9317fcce873366deb3703183e92cc47325b726b69691b33536244e10f4"
    ),
    medicalnet!(
        "medicalnet/resnet_34",
        "MedicalNet-Resnet34",
        "resnet_34.pth",
        "977a1be79298602fa35980de9c03789229ad36087fb1f4d9bde468aec653c658"
    ),
    medicalnet!(
        "medicalnet/resnet_34_23dataset",
        "MedicalNet-Resnet34",
        "resnet_34_23dataset.pth",
        "3ea7188e396774e4ef95b66e5e90a78273bb33f6e58d3d717bf24f5f1aaeaa28"
    ),
    medicalnet!(
        "medicalnet/resnet_50",
        "MedicalNet-Resnet50",
        "resnet_50.pth",
        "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84"
    ),
    medicalnet!(
        "medicalnet/resnet_50_23dataset",
        "MedicalNet-Resnet50",
        "resnet_50_23dataset.pth",
        "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e"
    ),
    medicalnet!(
        "medicalnet/resnet_101",
        "MedicalNet-Resnet101",
        "resnet_101.pth",
        "a26bbcf9b2ad35f048b0fa317234c003f171a4d719760e5c4aff9f793654ebcf"
    ),
    medicalnet!(
        "medicalnet/resnet_152",
        "MedicalNet-Resnet152",
        "resnet_152.pth",
        "e96c459f5317ef2cbb898c91575402da2c78b31a31f55c5d28943683fe0626da"
    ),
    medicalnet!(
        "medicalnet/resnet_200",
        "MedicalNet-Resnet200",
        "resnet_200.pth",
        "df58525b0276117169782617a379480d2cbc75230e84e152c603bf22a1fabfa8"
    ),
];
