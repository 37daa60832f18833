//! A selection in a list and its scroll position: shared by the site and process tables
//! (`app`) and the call trees (`call_trees`).

/// A selection in a list and the first row on screen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub selected: usize,
    pub offset: usize,
}

impl Cursor {
    pub(crate) fn move_by(&mut self, delta: isize, len: usize, page: usize) {
        let target = if delta < 0 {
            self.selected.saturating_sub(delta.unsigned_abs())
        } else {
            self.selected.saturating_add(delta.unsigned_abs())
        };
        self.go_to(target, len, page);
    }

    pub(crate) fn go_to(&mut self, index: usize, len: usize, page: usize) {
        self.selected = index.min(len.saturating_sub(1));
        self.follow(len, page);
    }

    /// Keep the selection inside the list and on screen, and the screen full when it can be.
    pub(crate) fn follow(&mut self, len: usize, page: usize) {
        *self = self.window(len, page);
    }

    /// The cursor as it must be drawn in a list of `len` rows showing `page` of them.
    pub(crate) fn window(self, len: usize, page: usize) -> Cursor {
        let page = page.max(1);
        let selected = self.selected.min(len.saturating_sub(1));
        let mut offset = self.offset.min(selected);
        if selected >= offset + page {
            offset = selected + 1 - page;
        }
        offset = offset.min(len.saturating_sub(page));
        Cursor { selected, offset }
    }
}
