//! Canonical JSON written straight from `Serialize`: the same bytes as
//! `serde_json::to_value(x)` printed compactly (object keys sorted bytewise, as
//! `serde_json::Map` is a `BTreeMap` without the `preserve_order` feature), without building
//! the `Value` tree.
//!
//! A plan's digest hashes this form. Building and dropping a `Value` of a 2,000-service
//! plan was most of the digest's cost; here each object's entries are written in place and
//! reordered only when their keys are not already sorted (struct fields usually are not,
//! `BTreeMap`s always are). Whatever is rare or subtle (floats, 128-bit integers, bytes,
//! chars, map keys that are not strings) goes through `serde_json::to_value` itself, so it
//! prints exactly as before. An error here means `to_value` would have failed too.

use serde::Serialize;
use serde::ser::{self, Error as _};

type Error = serde_json::Error;

/// One entry of an object being written: its key (a range of `keys`) and its text
/// `"key":value` (a range of `out`).
#[derive(Clone, Copy)]
struct Entry {
    key: (usize, usize),
    text: (usize, usize),
}

/// The writer. Reusable: [`Canonical::take`] hands over the bytes.
#[derive(Default)]
pub struct Canonical {
    out: Vec<u8>,
    /// Unescaped keys of the objects being written (a stack, like `entries`).
    keys: Vec<u8>,
    entries: Vec<Entry>,
    /// Segments of arrays whose elements are being sorted (a stack).
    elems: Vec<(usize, usize)>,
    scratch: Vec<u8>,
    /// Objects open now.
    depth: usize,
    /// At this object depth, arrays under these field names are written with their
    /// (string) elements sorted: see [`Canonical::with_sorted_lists`].
    sort_at: Option<(usize, &'static [&'static str])>,
    sort_next: bool,
}

impl Canonical {
    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Hands over the bytes written and starts afresh.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Writes `value`.
    pub fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self)
    }

    /// Opens an object written entry by entry ([`Canonical::entry`]); close it with
    /// [`Canonical::end_object`].
    pub fn begin_object(&mut self) -> Object {
        self.out.push(b'{');
        self.depth += 1;
        Object {
            entries: self.entries.len(),
            keys: self.keys.len(),
            body: self.out.len(),
        }
    }

    /// Writes `"key":` for the next entry of `obj`; the value is written next.
    fn key(&mut self, obj: &Object, key: &str) -> Result<usize, Error> {
        if self.entries.len() > obj.entries {
            self.out.push(b',');
        }
        let start = self.out.len();
        serde_json::to_writer(&mut self.out, key)?;
        self.out.push(b':');
        let k = self.keys.len();
        self.keys.extend_from_slice(key.as_bytes());
        self.entries.push(Entry {
            key: (k, self.keys.len()),
            text: (start, start),
        });
        if let Some((depth, fields)) = self.sort_at {
            self.sort_next = depth == self.depth && fields.contains(&key);
        }
        Ok(start)
    }

    /// Marks the end of the last entry's value.
    fn end_entry(&mut self) {
        self.sort_next = false;
        let end = self.out.len();
        if let Some(e) = self.entries.last_mut() {
            e.text.1 = end;
        }
    }

    /// Writes one entry of `obj` and returns where its value is in [`Canonical::bytes`]
    /// (valid unless `end_object` reorders the entries).
    pub fn entry<T: Serialize + ?Sized>(
        &mut self,
        obj: &Object,
        key: &str,
        value: &T,
    ) -> Result<std::ops::Range<usize>, Error> {
        self.key(obj, key)?;
        let start = self.out.len();
        value.serialize(&mut *self)?;
        self.end_entry();
        Ok(start..self.out.len())
    }

    /// [`Canonical::entry`], where the objects `depth` levels below the value (1: the
    /// values of a map) have the arrays under `fields` sorted: the text of sorting those
    /// arrays in the `Value` (the order of `depends_on` carries no meaning, so the digest
    /// ignores it). The elements are expected to be strings.
    pub fn entry_with_sorted_lists<T: Serialize + ?Sized>(
        &mut self,
        obj: &Object,
        key: &str,
        value: &T,
        depth: usize,
        fields: &'static [&'static str],
    ) -> Result<std::ops::Range<usize>, Error> {
        let saved = self.sort_at.replace((self.depth + depth, fields));
        let r = self.entry(obj, key, value);
        self.sort_at = saved;
        r
    }

    /// Closes `obj`, its entries sorted by key (the last of equal keys kept, as a map
    /// insert would). Returns whether they had to be reordered.
    pub fn end_object(&mut self, obj: Object) -> bool {
        self.depth -= 1;
        let entries = &mut self.entries[obj.entries..];
        let keys = &self.keys;
        let key = |e: &Entry| &keys[e.key.0..e.key.1];
        let sorted = entries.windows(2).all(|w| key(&w[0]) < key(&w[1]));
        if !sorted {
            // Stable, so among equal keys the last written is last.
            entries.sort_by(|a, b| key(a).cmp(key(b)));
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            for (i, e) in entries.iter().enumerate() {
                if entries.get(i + 1).is_some_and(|n| key(n) == key(e)) {
                    continue;
                }
                if !scratch.is_empty() {
                    scratch.push(b',');
                }
                scratch.extend_from_slice(&self.out[e.text.0..e.text.1]);
            }
            self.out.truncate(obj.body);
            self.out.extend_from_slice(&scratch);
            self.scratch = scratch;
        }
        self.out.push(b'}');
        self.entries.truncate(obj.entries);
        self.keys.truncate(obj.keys);
        !sorted
    }

    /// Writes a scalar as `serde_json::to_value` makes it.
    fn via_value<T: Serialize>(&mut self, v: T) -> Result<(), Error> {
        let v = serde_json::to_value(v)?;
        serde_json::to_writer(&mut self.out, &v)
    }

    fn plain<T: Serialize>(&mut self, v: T) -> Result<(), Error> {
        serde_json::to_writer(&mut self.out, &v)
    }

    fn begin_seq(&mut self) -> Seq<'_> {
        let sort = std::mem::take(&mut self.sort_next);
        self.out.push(b'[');
        Seq {
            body: self.out.len(),
            elems: self.elems.len(),
            sort,
            count: 0,
            w: self,
        }
    }

    /// `{"variant":` of an externally tagged enum value.
    fn variant_open(&mut self, variant: &str) -> Result<(), Error> {
        self.out.push(b'{');
        serde_json::to_writer(&mut self.out, variant)?;
        self.out.push(b':');
        Ok(())
    }
}

/// An object being written by [`Canonical::begin_object`].
pub struct Object {
    entries: usize,
    keys: usize,
    body: usize,
}

/// An array being written.
pub struct Seq<'a> {
    w: &'a mut Canonical,
    body: usize,
    elems: usize,
    sort: bool,
    count: usize,
}

impl<'a> Seq<'a> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if self.count > 0 {
            self.w.out.push(b',');
        }
        self.count += 1;
        let start = self.w.out.len();
        value.serialize(&mut *self.w)?;
        if self.sort {
            let end = self.w.out.len();
            self.w.elems.push((start, end));
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        self.close().map(drop)
    }

    /// Ends the array (its elements sorted if asked) and gives the writer back.
    fn close(self) -> Result<&'a mut Canonical, Error> {
        let w = self.w;
        if self.sort {
            let elems = &mut w.elems[self.elems..];
            // The elements are JSON strings (service names); compared as the strings they
            // encode, as `Value::as_str` would be. Without a backslash the text between the
            // quotes is the string itself.
            let out = &w.out;
            if elems.iter().any(|&(a, b)| out[a..b].contains(&b'\\')) {
                let mut decoded: Vec<(Option<String>, (usize, usize))> = elems
                    .iter()
                    .map(|&(a, b)| (serde_json::from_slice::<String>(&out[a..b]).ok(), (a, b)))
                    .collect();
                decoded.sort_by(|x, y| x.0.cmp(&y.0));
                for (slot, d) in elems.iter_mut().zip(decoded) {
                    *slot = d.1;
                }
            } else {
                let text = |&(a, b): &(usize, usize)| {
                    let s = &out[a..b];
                    // Non-strings (not expected) sort first, as `None` would.
                    if s.first() == Some(&b'"') {
                        Some(&s[1..s.len() - 1])
                    } else {
                        None
                    }
                };
                elems.sort_by(|x, y| text(x).cmp(&text(y)));
            }
            let mut scratch = std::mem::take(&mut w.scratch);
            scratch.clear();
            for (i, &(a, b)) in elems.iter().enumerate() {
                if i > 0 {
                    scratch.push(b',');
                }
                scratch.extend_from_slice(&w.out[a..b]);
            }
            w.out.truncate(self.body);
            w.out.extend_from_slice(&scratch);
            w.scratch = scratch;
            w.elems.truncate(self.elems);
        }
        w.out.push(b']');
        Ok(w)
    }
}

/// A map, struct or variant's fields being written.
pub struct Compound<'a> {
    w: &'a mut Canonical,
    obj: Object,
    /// `}` to add for the `{"variant":` around a struct variant.
    variant: bool,
}

/// A tuple variant's elements being written (`{"variant":[...]}`).
pub struct VariantSeq<'a>(Seq<'a>);

impl<'a> ser::Serializer for &'a mut Canonical {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = VariantSeq<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.via_value(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.via_value(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // `to_value` widens an f32 to f64, which prints differently.
        self.via_value(v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.via_value(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.via_value(v)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.plain(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // An array of numbers, as `to_value` makes bytes.
        self.via_value(v)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.plain(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant_open(variant)?;
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(self.begin_seq())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Seq<'a>, Error> {
        Ok(self.begin_seq())
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Seq<'a>, Error> {
        Ok(self.begin_seq())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<VariantSeq<'a>, Error> {
        self.variant_open(variant)?;
        Ok(VariantSeq(self.begin_seq()))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        let obj = self.begin_object();
        Ok(Compound {
            w: self,
            obj,
            variant: false,
        })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'a>, Error> {
        if name == "$serde_json::private::RawValue" {
            // serde_json's raw JSON: left to the `Value` path (never in a plan).
            return Err(Error::custom("raw JSON has no canonical form here"));
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant_open(variant)?;
        let obj = self.begin_object();
        Ok(Compound {
            w: self,
            obj,
            variant: true,
        })
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for VariantSeq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.element(value)
    }
    fn end(self) -> Result<(), Error> {
        let w = self.0.close()?;
        w.out.push(b'}');
        Ok(())
    }
}

impl Compound<'_> {
    fn close(self) -> Result<(), Error> {
        let Compound { w, obj, variant } = self;
        w.end_object(obj);
        if variant {
            w.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let written = key.serialize(KeyStr {
            w: &mut *self.w,
            obj: &self.obj,
        });
        if written.is_err() {
            // Not a plain string: the key `to_value` would give it (or its error).
            let k = map_key(key)?;
            self.w.key(&self.obj, &k)?;
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.w)?;
        self.w.end_entry();
        Ok(())
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.w.entry(&self.obj, key, value).map(drop)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.w.entry(&self.obj, key, value).map(drop)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// The key `serde_json::to_value` gives a map key that is not a plain string.
fn map_key<T: Serialize + ?Sized>(key: &T) -> Result<String, Error> {
    struct One<'k, K: ?Sized>(&'k K);
    impl<K: Serialize + ?Sized> Serialize for One<'_, K> {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(self.0, &())?;
            m.end()
        }
    }
    match serde_json::to_value(One(key))? {
        serde_json::Value::Object(m) => m
            .into_iter()
            .next()
            .map(|(k, _)| k)
            .ok_or_else(|| Error::custom("a map key vanished")),
        _ => Err(Error::custom("a map key did not make an object")),
    }
}

/// Writes a map key that is a string; anything else is an error, for [`map_key`].
struct KeyStr<'w> {
    w: &'w mut Canonical,
    obj: &'w Object,
}

/// Returned for a key that is not a plain string, sending it to [`map_key`].
#[derive(Debug)]
struct NotStr;

impl std::fmt::Display for NotStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a string key")
    }
}

impl std::error::Error for NotStr {}

impl ser::Error for NotStr {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        NotStr
    }
}

impl ser::Serializer for KeyStr<'_> {
    type Ok = ();
    type Error = NotStr;
    type SerializeSeq = ser::Impossible<(), NotStr>;
    type SerializeTuple = ser::Impossible<(), NotStr>;
    type SerializeTupleStruct = ser::Impossible<(), NotStr>;
    type SerializeTupleVariant = ser::Impossible<(), NotStr>;
    type SerializeMap = ser::Impossible<(), NotStr>;
    type SerializeStruct = ser::Impossible<(), NotStr>;
    type SerializeStructVariant = ser::Impossible<(), NotStr>;

    fn serialize_bool(self, _v: bool) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_i8(self, _v: i8) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_i16(self, _v: i16) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_i32(self, _v: i32) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_i64(self, _v: i64) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_u8(self, _v: u8) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_u16(self, _v: u16) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_u32(self, _v: u32) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_u64(self, _v: u64) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_f32(self, _v: f32) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_f64(self, _v: f64) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_char(self, _v: char) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_str(self, v: &str) -> Result<(), NotStr> {
        self.w.key(self.obj, v).map(drop).map_err(|_| NotStr)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_none(self) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_unit(self) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_unit_struct(self, _n: &'static str) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_unit_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
    ) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _v: &T,
    ) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _n: &'static str,
        _i: u32,
        _var: &'static str,
        _v: &T,
    ) -> Result<(), NotStr> {
        Err(NotStr)
    }
    fn serialize_seq(self, _l: Option<usize>) -> Result<Self::SerializeSeq, NotStr> {
        Err(NotStr)
    }
    fn serialize_tuple(self, _l: usize) -> Result<Self::SerializeTuple, NotStr> {
        Err(NotStr)
    }
    fn serialize_tuple_struct(
        self,
        _n: &'static str,
        _l: usize,
    ) -> Result<Self::SerializeTupleStruct, NotStr> {
        Err(NotStr)
    }
    fn serialize_tuple_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _l: usize,
    ) -> Result<Self::SerializeTupleVariant, NotStr> {
        Err(NotStr)
    }
    fn serialize_map(self, _l: Option<usize>) -> Result<Self::SerializeMap, NotStr> {
        Err(NotStr)
    }
    fn serialize_struct(
        self,
        _n: &'static str,
        _l: usize,
    ) -> Result<Self::SerializeStruct, NotStr> {
        Err(NotStr)
    }
    fn serialize_struct_variant(
        self,
        _n: &'static str,
        _i: u32,
        _v: &'static str,
        _l: usize,
    ) -> Result<Self::SerializeStructVariant, NotStr> {
        Err(NotStr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::Canonical;

    /// What the digest hashed before: the `Value`, printed.
    fn by_value<T: Serialize>(v: &T) -> String {
        serde_json::to_value(v).unwrap().to_string()
    }

    fn direct<T: Serialize>(v: &T) -> String {
        let mut w = Canonical::default();
        w.write(v).unwrap();
        String::from_utf8(w.take()).unwrap()
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum E {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        Struct { z: bool, a: Option<f32> },
    }

    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        Zeta { b: u64, a: Vec<E> },
    }

    #[derive(Serialize)]
    struct Inner {
        y: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        x: f64,
    }

    #[derive(Serialize)]
    struct Odd {
        zz: Vec<E>,
        tagged: Tagged,
        #[serde(flatten)]
        flat: Inner,
        ints: BTreeMap<i64, char>,
        bools: HashMap<bool, ()>,
        big: (u128, i128),
        floats: Vec<f32>,
        wide: Vec<f64>,
        bytes: serde_json::Value,
        unicode: BTreeMap<String, &'static str>,
        unit: (),
        a: Option<Box<Odd>>,
    }

    fn odd(nested: bool) -> Odd {
        Odd {
            zz: vec![
                E::Unit,
                E::Newtype(7),
                E::Tuple(-3, "t\"q\\\n\u{1}".into()),
                E::Struct {
                    z: true,
                    a: Some(0.1),
                },
                E::Struct { z: false, a: None },
            ],
            tagged: Tagged::Zeta {
                b: u64::MAX,
                a: vec![E::Unit],
            },
            flat: Inner {
                y: "why",
                skipped: None,
                x: 1e300,
            },
            ints: [(-5, 'é'), (10, '\u{0}'), (2, '"')].into_iter().collect(),
            bools: [(true, ())].into_iter().collect(),
            big: (u128::from(u64::MAX), i128::from(i64::MIN)),
            floats: vec![0.1, 1.5, f32::NAN, -0.0, 3.4e38],
            wide: vec![0.1, f64::INFINITY, 1.0, 123_456_789.123],
            bytes: serde_json::json!({"b": [1, 2], "a": {"d": null, "c": "x"}}),
            unicode: [
                ("ä".to_owned(), "1"),
                ("z".to_owned(), "2"),
                ("A".to_owned(), "3"),
                ("a\u{7f}".to_owned(), "4"),
                ("a\n".to_owned(), "5"),
                (String::new(), "6"),
            ]
            .into_iter()
            .collect(),
            unit: (),
            a: nested.then(|| Box::new(odd(false))),
        }
    }

    #[test]
    fn writes_the_bytes_of_the_printed_value() {
        let v = odd(true);
        assert_eq!(direct(&v), by_value(&v));
        assert_eq!(direct(&E::Unit), by_value(&E::Unit));
        assert_eq!(direct(&[1u8, 2]), by_value(&[1u8, 2]));
        let empty: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        assert_eq!(direct(&empty), "{}");
    }

    #[test]
    fn refuses_what_to_value_refuses() {
        let too_big = u128::MAX;
        assert!(serde_json::to_value(too_big).is_err());
        assert!(Canonical::default().write(&too_big).is_err());
        let tuple_keys: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        assert!(serde_json::to_value(&tuple_keys).is_err());
        assert!(Canonical::default().write(&tuple_keys).is_err());
    }

    #[derive(Serialize)]
    struct Svc {
        steps: Vec<&'static str>,
        depends_on: Vec<&'static str>,
        coupled_with: Vec<&'static str>,
    }

    #[test]
    fn sorts_the_lists_it_is_asked_to_at_that_depth_only() {
        let services: BTreeMap<&str, Svc> = [
            (
                "b",
                Svc {
                    steps: vec!["z", "a"],
                    depends_on: vec!["s10", "s2", "s1", "s2"],
                    coupled_with: vec!["y\\", "x", "a\n"],
                },
            ),
            (
                "a",
                Svc {
                    steps: vec![],
                    depends_on: vec![],
                    coupled_with: vec!["q"],
                },
            ),
        ]
        .into_iter()
        .collect();
        let mut w = Canonical::default();
        let o = w.begin_object();
        w.entry_with_sorted_lists(
            &o,
            "services",
            &services,
            2,
            &["depends_on", "coupled_with"],
        )
        .unwrap();
        w.entry(&o, "depends_on", &["z", "a"]).unwrap();
        assert!(w.end_object(o), "`depends_on` is moved before `services`");
        let mut expected = serde_json::json!({ "services": services, "depends_on": ["z", "a"] });
        for s in expected["services"].as_object_mut().unwrap().values_mut() {
            for f in ["depends_on", "coupled_with"] {
                s[f].as_array_mut()
                    .unwrap()
                    .sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
        let got = String::from_utf8(w.take()).unwrap();
        assert_eq!(got, expected.to_string());
        assert!(
            got.contains(r#""depends_on":["s1","s10","s2","s2"]"#),
            "{got}"
        );
        assert!(got.contains(r#""steps":["z","a"]"#), "{got}");
    }
}
