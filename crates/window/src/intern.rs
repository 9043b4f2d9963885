//! Label strings stored once: an aggregated series refers to its namespace, workload, route,
//! policy and identities by a 4-byte [`Sym`]. Symbols are reference-counted by the series that use
//! them, so a string leaves memory when the last series naming it ages out. Lookups by `&str`
//! ([`Interner::get`]) never allocate; only a new series interns ([`Interner::retain`]).

use std::collections::HashMap;
use std::sync::Arc;

/// An interned string. `Sym::EMPTY` is the empty string and is never freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Sym(pub(crate) u32);

impl Sym {
    pub(crate) const EMPTY: Sym = Sym(0);
}

pub(crate) struct Interner {
    ids: HashMap<Arc<str>, Sym, foldhash::fast::RandomState>,
    strings: Vec<Option<Arc<str>>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    /// Bytes of string data held.
    bytes: usize,
}

impl Interner {
    pub(crate) fn new() -> Self {
        Interner {
            ids: HashMap::default(),
            strings: vec![Some(Arc::from(""))],
            refs: vec![u32::MAX],
            free: Vec::new(),
            bytes: 0,
        }
    }

    /// The symbol of `s` if some series uses it.
    pub(crate) fn get(&self, s: &str) -> Option<Sym> {
        if s.is_empty() {
            return Some(Sym::EMPTY);
        }
        self.ids.get(s).copied()
    }

    /// The symbol of `s`, with one more reference.
    pub(crate) fn retain(&mut self, s: &str) -> Sym {
        let sym = match self.get(s) {
            Some(sym) => sym,
            None => {
                let text: Arc<str> = Arc::from(s);
                let sym = match self.free.pop() {
                    Some(i) => {
                        self.strings[i as usize] = Some(text.clone());
                        self.refs[i as usize] = 0;
                        Sym(i)
                    }
                    None => {
                        self.strings.push(Some(text.clone()));
                        self.refs.push(0);
                        Sym(self.strings.len() as u32 - 1)
                    }
                };
                self.bytes += s.len();
                self.ids.insert(text, sym);
                sym
            }
        };
        self.retain_sym(sym);
        sym
    }

    /// One more reference to an existing symbol.
    pub(crate) fn retain_sym(&mut self, sym: Sym) {
        if sym != Sym::EMPTY {
            self.refs[sym.0 as usize] += 1;
        }
    }

    /// One reference fewer; the string is dropped with the last one.
    pub(crate) fn release(&mut self, sym: Sym) {
        if sym == Sym::EMPTY {
            return;
        }
        let i = sym.0 as usize;
        self.refs[i] -= 1;
        if self.refs[i] == 0
            && let Some(text) = self.strings[i].take()
        {
            self.bytes -= text.len();
            self.ids.remove(&text);
            self.free.push(sym.0);
        }
    }

    pub(crate) fn resolve(&self, sym: Sym) -> &str {
        self.strings
            .get(sym.0 as usize)
            .and_then(|s| s.as_deref())
            .unwrap_or("")
    }

    /// Live strings (the empty one not counted).
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Estimated heap bytes.
    pub(crate) fn memory(&self) -> usize {
        // Each string: its bytes plus the Arc's two counters; the map: key (16) + value (4) +
        // control byte, at hashbrown's 7/8 load.
        let per_string = 16;
        let map = self.ids.capacity() * (16 + 4 + 4 + 1);
        self.bytes
            + self.ids.len() * per_string
            + map
            + self.strings.capacity() * 16
            + self.refs.capacity() * 4
            + self.free.capacity() * 4
    }
}
