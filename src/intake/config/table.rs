//! The macro behind the settings table in `config/mod.rs`: from one line per setting (key,
//! type, flag, kind: `default(VALUE)`, `required("what")` or `optional("when unset")`) it
//! generates the [`Layer`](super::Layer) (one source of settings), the
//! [`Settings`](super::Settings) (the effective ones, each with its source), [`KEYS`](super::KEYS),
//! the file's key dispatch, the precedence rule and the `--check-config` lines. So adding a
//! setting of an existing type is one line in the table (plus its flag in the CLI and its use
//! in `ServeOptions`).
//!
//! Per kind, the effective setting is: `default` a `Setting<T>` (flag, else file, else the
//! default); `required` a `Setting<T>` (flag, else file, else an error naming both);
//! `optional` a `Setting<Option<T>>` (flag, else file, else `None`, printed as a comment).

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $ty:ty, $flag:literal, $kind:ident($arg:expr);
    )*) => {
        /// One source of settings (the file, or the flags): `None` where it says nothing.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct Layer {
            $( $(#[doc = $doc])* pub $key: Option<$ty>, )*
        }

        /// Every key of the file, with the flag that overrides it, in the table's order.
        pub const KEYS: &[(&str, &str)] = &[ $( (stringify!($key), $flag), )* ];

        /// The settings `drain serve` runs with: flags over the file over the defaults.
        #[derive(Clone, Debug)]
        pub struct Settings {
            /// The `--config` file, if any.
            pub config_file: Option<PathBuf>,
            $( $(#[doc = $doc])* pub $key: settings!(@type $kind $ty), )*
        }

        impl Layer {
            /// Reads `key`'s value into its field; false when there is no such key.
            fn read_key(
                &mut self,
                r: &mut file::Reader<'_>,
                key: &str,
                v: &file::Value<'_>,
                base: &Path,
            ) -> bool {
                match key {
                    $( stringify!($key) => {
                        self.$key = <$ty as values::ConfigValue>::read(r, key, v, base)
                    } )*
                    _ => return false,
                }
                true
            }
        }

        impl Settings {
            /// Flags over the file over the defaults; every required setting that neither
            /// gives is one problem.
            fn combine(
                flags: Layer,
                file: Layer,
                config_file: Option<PathBuf>,
            ) -> Result<Settings, ConfigError> {
                let mut missing = Vec::new();
                $(
                    let $key = settings!(@resolve $kind($arg) $key $flag
                        pick(flags.$key, file.$key), &mut missing, &config_file);
                )*
                let all = || Some(Settings { config_file: config_file.clone(), $( $key: $key?, )* });
                all().ok_or(ConfigError(missing))
            }

            /// Every setting with a value as (key, TOML value, source), in the table's order,
            /// and every optional one left unset as (key, what that means).
            fn entries(&self) -> (Vec<(&'static str, String, Source)>, Vec<(&'static str, &'static str)>) {
                let mut set = Vec::new();
                let mut unset = Vec::new();
                $( settings!(@entry $kind($arg) self.$key, stringify!($key), set, unset); )*
                (set, unset)
            }
        }
    };

    (@type default $ty:ty) => { Setting<$ty> };
    (@type required $ty:ty) => { Setting<$ty> };
    (@type optional $ty:ty) => { Setting<Option<$ty>> };

    (@resolve default($arg:expr) $key:ident $flag:literal $picked:expr, $missing:expr, $file:expr) => {
        Some(or_default($picked, $arg))
    };
    (@resolve required($arg:expr) $key:ident $flag:literal $picked:expr, $missing:expr, $file:expr) => {
        required($picked, stringify!($key), $flag, $arg, $file, $missing)
    };
    (@resolve optional($arg:expr) $key:ident $flag:literal $picked:expr, $missing:expr, $file:expr) => {
        Some(or_default($picked.map(|s| Setting { value: Some(s.value), source: s.source }), None))
    };

    (@entry optional($arg:expr) $s:expr, $key:expr, $set:ident, $unset:ident) => {
        match &$s.value {
            Some(v) => $set.push(($key, values::ConfigValue::to_toml(v), $s.source)),
            None => $unset.push(($key, $arg)),
        }
    };
    (@entry $kind:ident($arg:expr) $s:expr, $key:expr, $set:ident, $unset:ident) => {
        $set.push(($key, values::ConfigValue::to_toml(&$s.value), $s.source))
    };
}

pub(super) use settings;
